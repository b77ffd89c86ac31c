"""keyseed.storage
~~~~~~~~~~~~~~~

Durable server state. The protocol core never imports this package: the drivers load records
for it and commit the ``StoreRecord`` compare-and-sets it returns.
"""
