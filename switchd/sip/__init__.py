"""SIP signalling stack: sans-IO message handling and authentication."""
