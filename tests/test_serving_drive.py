"""`studio simulate --via-http`'s requests carry what the audience clustering needs to group each user."""

import numpy as np
import pandas as pd

from studio.learning.audience import AudienceClustering
from studio.serving.drive import user_features
from studio.sim.simulator import AudienceSimulator


def test_request_features_put_every_user_in_the_group_the_clustering_gives_the_full_row():
    """The clustering is fitted on age, region, device and the interest tags; requests that leave the tags out put
    many users in another group (what the driver did before), requests with every fitted column put all of them in
    the group of their full row."""
    users = AudienceSimulator(seed=0).sample_users(800)
    clustering = AudienceClustering(n_groups=4, seed=0, columns=["age", "region", "device"]).fit(users)
    payloads = user_features(users, clustering)
    assert set(payloads[0]) == {"age", "region", "device", "interests"} and isinstance(payloads[0]["interests"], list)
    full = clustering.predict(users)
    sent = np.array([clustering.predict(pd.DataFrame([payload]))[0] for payload in payloads])
    assert (sent == full).all()
    without_tags = clustering.predict(users[["age", "region", "device"]])
    assert (without_tags != full).mean() > 0.05  # the tags matter: leaving them out regroups users
