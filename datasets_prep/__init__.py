"""Dataset preparation: turn folders of images into one multi-resolution LMDB for progressive training.

Modules:
    __main__     -- the command line (`python -m datasets_prep build|info|verify|bench`).
    sources      -- folders, zips, CIFAR-10 tarballs and the built-in synthetic shapes.
    images       -- one image to its stored pyramid (orient, RGB, crop, resize, downsample, encode).
    build        -- parallel processing, batched ordered commits, resume, the skip report.
    lmdb_format  -- keys, metadata and encodings shared with the reader (progressive.data).
    check        -- `info` and `verify`.
    bench        -- build and read throughput.
"""
