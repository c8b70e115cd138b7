"""Think: FACS knowledge, prompts, LLM engines, CoT schema and validation.

`annotation` owns the FACS vocabulary (AU registry, emotion prototypes, face regions);
`pipelines` and `tbd_lightning` import it, never the other way round.
"""
