"""The gRPC and REST clients refuse the same bad options, each naming its field."""

import pytest

from serving.client import PredictionClient
from serving.rest_client import RestPredictionClient

BAD_OPTIONS = [
    ({"retries": -1}, "`retries` must be >= 0"),
    ({"timeout_s": 0}, "`timeout_s` must be > 0"),
    ({"version": 3, "version_label": "stable"}, "`version` or `version_label`, not both"),
]


@pytest.mark.parametrize("client_class", [PredictionClient, RestPredictionClient])
@pytest.mark.parametrize("options, message", BAD_OPTIONS)
def test_bad_client_options_are_refused_by_both_clients(client_class, options, message):
    with pytest.raises(ValueError, match=message):
        client_class("localhost:1", "model", **options)


@pytest.mark.parametrize("client_class", [PredictionClient, RestPredictionClient])
def test_good_client_options_are_kept(client_class):
    client = client_class("localhost:1", "model", version_label="stable", timeout_s=5, retries=0)
    assert (client.version, client.version_label, client.timeout_s, client.retries) == (None, "stable", 5, 0)
