"""The teacher: model backends behind one interface, the Ray Serve deployment that hosts them, the offline build.

Owns: the `TeacherBackend` interface and the choice of backend (backend.py), transformers in-process
(hf_backend.py) and a vLLM engine (vllm_backend.py: its pre-flight checks and log-prob conversion too), the
Serve deployment and its handle (service.py), the RayService application builder (app.py), and the tiny
teacher raykd trains offline when no model is given (build.py, tiny_model.py).

May import: raykd.config, raykd.signals, raykd.models, raykd.data (the corpus), raykd.eval.heldout, raykd.files, raykd.cluster (the loopback bind of a replica),
raykd.console; Ray Serve, torch, transformers and vLLM only inside the functions that need them (importing
service.py stays light: tests/test_imports.py).
"""
