"""Auto-captioning: ``lorakit caption DIR`` writes a caption file next to every image of a dataset.

* :mod:`.base`     the small captioner interface every back-end implements, and the missing-file message;
* :mod:`.tagger`   WD14-style ONNX taggers (SmilingWolf's models + ``selected_tags.csv``) through onnxruntime;
* :mod:`.hf`       transformers back-ends: Florence-2, chat VLMs (Qwen2.5-VL / Qwen3-VL), BLIP;
* :mod:`.text`     trigger word and class, prefix/suffix, tag or sentence mode, the family's token limit;
* :mod:`.run`      the run: images of a kohya folder or dataset TOML, never overwriting, atomic writes,
                   resume after an interruption, progress and the final table;
* :mod:`.toy`      the toy captioner (a tiny BLIP trained on the toy world) and its accuracy measurement.
"""
