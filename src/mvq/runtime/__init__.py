"""The machine mvq runs on: devices, processes (DDP), CPU threads, memory checks, train / eval
modes, the optional extras."""
