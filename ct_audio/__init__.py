"""Raw-waveform speech front end: 8-bit μ-law audio for the Compressive Transformer."""
