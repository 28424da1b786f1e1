"""SMPP 3.4: sans-IO codec (pdu), GSM 03.38 and other codings (gsm), long messages (concat)."""
