"""Audiobooks: books → chapters → chunks through the batch engine → an m4b with chapters (no Prefect here).

``sources`` reads EPUB/TXT/Markdown/HTML, ``chapters`` numbers, skips and selects, ``chunking`` cuts chapters
into sentence-bounded chunks sized by the catalogue, ``assemble`` stitches a chapter, ``m4b`` masters the
book, ``captions`` times subtitles, ``qc`` transcribes back and retakes, ``pipeline`` runs it all, ``cli``
is ``voxmill audiobook``.
"""
