"""Drop-in ``torch.nn`` replacements built on fastsn's ops (spectral norm, gradient penalty, minibatch
discrimination and friends land here with their ops)."""
