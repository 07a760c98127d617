# mmseg's runtime plus our registration: `import mmseg_msvit` makes mmseg's own tools work too.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['mmseg_msvit'], allow_failed_imports=False)
