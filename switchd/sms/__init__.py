"""SMS: the message engine (storage, routing, rating, receipts) between customers and SMSCs.

``engine`` is what protocol adapters talk to; ``store`` holds the database
work. The SMPP codec and the upstream client live in ``switchd.smpp``.
"""
