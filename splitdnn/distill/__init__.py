"""Distillation: configs, losses, the epoch loop and the methods that plug into it.

``config`` (what a run is) < ``losses``, ``augment`` < ``trainer`` (the one epoch loop) <
``probe`` < the methods ``hnd`` and ``kd`` < ``classes``. :mod:`splitdnn.methods`, above this
package and :mod:`splitdnn.nonn`, runs a config by its method name.
Nothing is imported here, so reading a config needs no training code.
"""
