"""Billing: the balance ledger, tariffs, rating, CDRs and periodic write-offs."""
