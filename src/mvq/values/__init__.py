"""The checked values passed between the parts: typed config fields, command-line argument types,
`Codes` (what a tokenizer hands a prior), `Decoding` (how a prior draws)."""
