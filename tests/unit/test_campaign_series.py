"""The per-campaign metric series bound: most recently active campaigns kept, the rest removed whole."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from sender.event_metrics import EventMetrics
from sender.metrics import Metrics


def _campaigns(text: str) -> set[str]:
    return set(re.findall(r'campaign_id="(\d+)"', text))


def test_outcomes_keep_the_most_recently_active_campaigns_and_count_every_one_in_the_aggregate() -> None:
    m = Metrics(campaign_series_limit=3)
    for cid in range(1, 6):
        m.outcome(cid, "sent")
    m.outcome(3, "failed")  # 3 becomes the most recent
    m.outcome(6, "sent")  # evicts the least recently active: 4
    assert _campaigns(m.render().decode()) == {"5", "3", "6"}
    assert m.total("sent") == 6 and m.total("failed") == 1
    assert m.campaign_series.evicted == 3


def test_a_campaign_that_ends_loses_every_series_and_comes_back_from_zero() -> None:
    m = Metrics(campaign_series_limit=2)
    events = EventMetrics(m.registry, m.campaign_series)
    m.outcome(1, "sent", 5)
    m.report_backlog({1: 7, 2: 3})
    events.unsubscribed(1)
    text = m.render().decode()
    assert 'sender_messages_total{campaign_id="1",outcome="sent"} 5.0' in text
    assert 'sender_campaign_events_total{campaign_id="1",event="unsubscribed"} 1.0' in text
    assert 'sender_backlog_recipients 10.0' in text and 'sender_sending_campaigns 2.0' in text
    m.forget_campaign(1)
    text = m.render().decode()
    assert _campaigns(text) == {"2"}
    assert 'sender_recipient_events_total{event="unsubscribed"} 1.0' in text  # the aggregate stays
    m.outcome(1, "sent")
    assert 'sender_messages_total{campaign_id="1",outcome="sent"} 1.0' in m.render().decode()


def test_backlogs_show_only_campaigns_with_room_and_drop_those_no_longer_sending() -> None:
    m = Metrics(campaign_series_limit=2)
    m.report_backlog({10: 1, 11: 2, 12: 3})  # passive: no eviction, the third has no room
    assert _campaigns(m.render().decode()) == {"10", "11"}
    assert 'sender_backlog_recipients 6.0' in m.render().decode()
    m.report_backlog({11: 2, 12: 3})
    text = m.render().decode()
    assert 'sender_pending_backlog{campaign_id="10"}' not in text
    assert 'sender_pending_backlog{campaign_id="11"} 2.0' in text


def test_events_for_a_standalone_registry_are_bounded_too() -> None:
    events = EventMetrics(CollectorRegistry())
    for cid in range(200):
        events.unsubscribed(cid)
    registry_text = "\n".join(f"{s.name}{s.labels}" for metric in events.campaign_events.collect()
                              for s in metric.samples)
    assert len(set(re.findall(r"'campaign_id': '(\d+)'", registry_text))) == events.series.limit
