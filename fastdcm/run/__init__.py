"""The batch layer: a run over many inputs, built on seams.

One module per job, one place for each kind of change::

    discover.py    inputs -> Source records (files, folders, globs, @lists, stdin, DICOMDIR)
    naming.py      Source + template -> output names, never outside OUT
    pipeline.py    one input in a worker: open, render, encode, hand the images to the image sink
    write.py       the atomic writer: directory fds from the output root, O_NOFOLLOW, per-run temp folder
    executors/     the Executor protocol; serial (this process) and a process pool; a cluster plugs in here
    sinks/         the Sink protocols; image files (in the worker) and the manifest (in the parent)
    progress.py    the Report and the progress line
    convert.py     the wiring: fastdcm.convert

Only paths, options and small results cross a process boundary. State that lives per worker
(the open output root, encoders, caches of a run) lives in the :class:`~fastdcm.run.pipeline.Pipeline`
the executor creates in each worker, never in module globals.
"""
