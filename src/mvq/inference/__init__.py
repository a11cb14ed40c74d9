"""A saved model at work: sampling from a prior, a reconstruction figure, token files of a data
set."""
