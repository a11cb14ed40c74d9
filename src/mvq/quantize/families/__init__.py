"""The quantizer families of ``model.quantizer``, one module each holding ``FAMILY``
(a `mvq.quantize.family.Family`); `mvq.quantize.registry` finds every module here,
so adding a family is adding its module."""
