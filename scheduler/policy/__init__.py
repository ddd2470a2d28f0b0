"""Pure scheduling decisions over plain data: placement, estimates, micro-batch, retry, states, exits."""
