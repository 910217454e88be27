"""The web UI's helpers: what each tab of `app.py` does, as plain functions tested on their own.

`app.py` holds the Gradio layout and calls these; nothing here imports Gradio.

- `masks`: click-to-select, mask upload, the tinted / true-colour preview (Create tab);
- `create`: placement presets, audience groups and their profiles, prompt suggestions, the token counter, predicted
  CTR and rank, accepting a creative into the campaign cache, the zip download (Create tab);
- `experiments`: CTR per bucket and group, lift, CTR over time, each arm's score and "why this creative wins", read
  from a serving database (Experiments tab);
- `campaign`: the catalogue batch job, contact sheets per group, retire / promote (Campaign tab);
- `audience`: groups, sizes, profiles, a 2-D map of users, re-clustering (Audience tab);
- `models`: the models in use, their versions and sizes, and checking a model choice (Models tab).
"""
