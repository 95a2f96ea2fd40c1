"""Dataset preparation and reading: turn folders of images into one multi-resolution LMDB, and read it back.

`progressive` imports this package; this package imports nothing from `progressive`.

Modules:
    __main__     -- the command line (`python -m datasets_prep build|info|verify|bench`).
    sources      -- folders, zips, CIFAR-10 tarballs, Fashion-MNIST IDX files, emoji fonts, the synthetic shapes.
    synthetic    -- the procedurally rendered shapes (also served to the trainer directly).
    images       -- one image to its stored pyramid (orient, RGB, crop, resize, downsample, encode).
    build        -- parallel processing, batched ordered commits, resume, the skip report.
    lmdb_format  -- keys, metadata and encodings shared by the builder and the reader.
    reader       -- LMDBImageDataset, the torch Dataset the trainer, evaluation and exports read; read_labels.
    locking      -- the directory lock of builds and training runs.
    check        -- `info` and `verify`.
    bench        -- build and read throughput.
"""
