"""The Assistants API client: profiles, retries, pacing and page models.

Map: ``profiles`` (URL, query and headers per service family), ``retry`` (pure retry policy),
``pacer`` (shared rate and 429 pause), ``models`` (page and object parsing), ``messages`` (the
message contract check, duplicates within a page), ``api`` (the client and its error
translation), ``pager`` (loop-proof walks of the thread listing), ``testing`` (a virtual clock
for tests), ``auth`` (the process's Entra token), ``entra`` (the one seam to azure-identity,
imported only with ``api.auth = entra``).
"""

from worker.client.api import ApiClient, ClientEvents
from worker.client.models import MessagePage
from worker.client.pacer import Pacer

__all__ = ["ApiClient", "ClientEvents", "MessagePage", "Pacer"]
