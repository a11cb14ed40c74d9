"""The quantizer families of ``model.quantizer``, one module each holding ``FAMILY``
(a :class:`mvq.quantize.family.Family`); :mod:`mvq.quantize.registry` finds every module here,
so adding a family is adding its module."""
