"""A saved model folder: what it holds and its one writer (`checkpoint`), and `mvq.load` /
`save_pretrained` / `from_pretrained` (`pretrained`)."""
