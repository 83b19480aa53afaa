"""The web UI (``lorakit ui``; Gradio, the ``ui`` extra). A face over the CLI: it writes TOMLs, runs ``lorakit train``
as separate processes and reads run folders.

``app``      the pages and the server (the only module that imports Gradio)
``form``     the Train form generated from the config schema, and its exact TOML
``jobs``     the job queue (SQLite) and the processes, with states derived from pids and run folders
``runner``   the small process that runs one job attempt and records its exit status
``runs``     reading a run folder: metrics, progress, samples, LoRA files, health warnings
``dataset``  uploads, folder guards, captions, kohya folder names
``plan``     memory and time estimates before a run starts
``sweeps``   the Sweeps page: start / stop / resume a sweep (a task), show its comparison
``tasks``    long CLI commands besides the job queue (a sweep), run through ``runner``, states from their files
``tools``    the LoRA tools page (verify, convert, resize, merge) and the Push page
"""
