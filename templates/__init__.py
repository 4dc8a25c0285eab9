"""The built-in Jinja2 body templates, shipped in the wheel as the ``gateway_templates`` package.

An operator's ``[templates] dir`` overrides any of them by file name.
"""
