"""The glyph data sets: characters rendered from fonts, each class a character and each image one face.

:class:`~pml_recallk.datasets.Glyphs` (:mod:`.latin`) renders Latin, Greek and Cyrillic characters from any
folder of text fonts (matplotlib's by default); :class:`~pml_recallk.datasets.HanGlyphs` (:mod:`.han`) renders
3,500 Han characters from Debian's CJK fonts. Both find fonts and read faces with :mod:`.fonts`, draw with the
one renderer of :mod:`.render` (each with its :class:`~.render.Layout`) and cache a :mod:`.table` of renders;
:mod:`.latin_faces` and :mod:`.han_faces` decide which faces and renders each keeps, :mod:`.han_table` groups
the Han faces into designs. Import the data sets from :mod:`pml_recallk.datasets`; this package imports nothing
itself, so that one data set does not load the other's dependencies.
"""
