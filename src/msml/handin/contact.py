"""Where Grafana sends the alerts of `msml evidence grafana`: the local webhook receiver, and one contact point a
reviewer recognises, chosen from the environment (no address or token in any file).

`MSML_GRAFANA_CONTACT` = `webhook` (default: the receiver only, as here and in the tests), `email`, `discord`,
`telegram` or `slack`; each needs its variables (`CONTACTS`). The provisioning file names the secrets as
`$__env{NAME}` (Grafana reads them inside its container, `docker run -e NAME` passes them through), so the copy
mounted into the container carries no secret either. E-mail also needs Grafana's own SMTP settings (`GF_SMTP_*`).
The receiver stays an integration of the same contact point: the payload delivered is shown beside Grafana's page.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass

from msml.errors import ExportError

CHOICE = "MSML_GRAFANA_CONTACT"


@dataclass(frozen=True)
class Contact:
    kind: str  # Grafana's integration type
    settings: dict[str, str]  # Grafana setting -> environment variable holding it
    needs: tuple[str, ...] = ()  # further variables that must be set (Grafana's SMTP server)


CONTACTS = {
    "webhook": None,
    "email": Contact("email", {"addresses": "MSML_GRAFANA_EMAIL_TO"}, ("GF_SMTP_HOST", "GF_SMTP_FROM_ADDRESS")),
    "discord": Contact("discord", {"url": "MSML_DISCORD_WEBHOOK_URL"}),
    "telegram": Contact("telegram", {"bottoken": "MSML_TELEGRAM_BOT_TOKEN", "chatid": "MSML_TELEGRAM_CHAT_ID"}),
    "slack": Contact("slack", {"url": "MSML_SLACK_WEBHOOK_URL"}),
}
SMTP_PREFIX = "GF_SMTP_"


def chosen(env: Mapping[str, str] | None = None) -> Contact | None:
    """The contact point the environment asks for (None: the webhook only); ExportError naming what is missing."""
    env = os.environ if env is None else env
    kind = (env.get(CHOICE) or "webhook").strip().lower()
    if kind not in CONTACTS:
        raise ExportError(f"{CHOICE}={kind!r}: choose one of {', '.join(CONTACTS)}")
    contact = CONTACTS[kind]
    if contact is None:
        return None
    unset = [v for v in (*contact.settings.values(), *contact.needs) if not env.get(v)]
    if unset:
        raise ExportError(f"{CHOICE}={kind} needs {', '.join(unset)} set in the environment")
    return contact


def with_contact(provisioning: dict, contact: Contact | None) -> dict:
    """The alerting provisioning with `contact` added as a second integration of its contact point."""
    if contact is None:
        return provisioning
    result = copy.deepcopy(provisioning)
    point = result["contactPoints"][0]
    point["receivers"].append(
        {
            "uid": f"{point['name']}-{contact.kind}",
            "type": contact.kind,
            "settings": {key: f"$__env{{{var}}}" for key, var in contact.settings.items()},
            "disableResolveMessage": False,
        }
    )
    return result


def container_env(contact: Contact | None, env: Mapping[str, str] | None = None) -> list[str]:
    """`docker run` arguments passing the contact's variables (and Grafana's SMTP settings) by name, not value."""
    env = os.environ if env is None else env
    if contact is None:
        return []
    names = [*contact.settings.values()]
    if contact.kind == "email":
        names += sorted(k for k in env if k.startswith(SMTP_PREFIX))
        return [a for n in names for a in ("-e", n)] + ["-e", "GF_SMTP_ENABLED=true"]
    return [a for n in names for a in ("-e", n)]
