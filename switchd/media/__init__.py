"""Media plane: the RTP relay, SDP offer/answer, DTMF, prompts and recording."""
