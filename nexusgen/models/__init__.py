"""Single-device `nn.Module`s only: no file I/O, no downloads, no torch.distributed."""
