"""The IIF callback interface of seed 003: a text protocol over UDP (sans-IO codec + server)."""
