-- Deliverability (issue 11): one-click unsubscribe, SES bounce/complaint/delivery events,
-- suppression, and the account guard.

-- Addresses that must never be mailed again, whatever the main app re-imports. Keyed by the
-- normalised address (lower-cased, domain in punycode: sender.suppression.suppression_key).
CREATE TABLE suppressions (
    email        text PRIMARY KEY,
    reason       text NOT NULL
                 CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'soft_bounced', 'manual', 'ses')),
    source       text NOT NULL,
    detail       text,
    campaign_id  bigint,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now()
);

-- When and from which campaign a contact unsubscribed.
ALTER TABLE contacts
    ADD COLUMN unsubscribed_at timestamptz,
    ADD COLUMN unsubscribed_campaign_id bigint;

-- What SES said after accepting a message. Each column is set once (first event wins), so a late
-- Delivery never clears a Bounce and a replayed event changes nothing.
ALTER TABLE campaign_recipients
    ADD COLUMN delivered_at     timestamptz,
    ADD COLUMN bounced_at       timestamptz,
    ADD COLUMN bounce_type      text,
    ADD COLUMN complained_at    timestamptz,
    ADD COLUMN complaint_type   text,
    ADD COLUMN unsubscribed_at  timestamptz,
    ADD COLUMN delayed_at       timestamptz,
    ADD COLUMN event_error      text;

-- Events are matched by SES message id.
CREATE INDEX campaign_recipients_message_id_idx ON campaign_recipients (message_id)
    WHERE message_id IS NOT NULL;

-- Per-campaign event counters, moved in the same statement as the recipient columns.
ALTER TABLE campaigns
    ADD COLUMN delivered_count     bigint NOT NULL DEFAULT 0,
    ADD COLUMN hard_bounced_count  bigint NOT NULL DEFAULT 0,
    ADD COLUMN soft_bounced_count  bigint NOT NULL DEFAULT 0,
    ADD COLUMN complained_count    bigint NOT NULL DEFAULT 0,
    ADD COLUMN unsubscribed_count  bigint NOT NULL DEFAULT 0,
    ADD COLUMN paused_reason       text;

-- Event identities already applied (idempotency); pruned after SENDER_EVENTS_RETENTION_DAYS.
CREATE TABLE ses_events (
    event_key    text PRIMARY KEY,
    event_type   text NOT NULL,
    message_id   text,
    email        text,
    received_at  timestamptz NOT NULL DEFAULT now()
);
-- Soft bounces per address over a window (the suppression rule) and pruning.
CREATE INDEX ses_events_soft_bounce_idx ON ses_events (email, received_at) WHERE event_type = 'soft_bounce';
CREATE INDEX ses_events_received_idx ON ses_events (received_at);

-- SES account-level suppression list sync (SENDER_SES_SUPPRESSION_SYNC): when a local hard
-- suppression was pushed, and where the last import from SES stopped.
ALTER TABLE suppressions ADD COLUMN ses_synced_at timestamptz;
CREATE INDEX suppressions_unsynced_idx ON suppressions (first_seen)
    WHERE ses_synced_at IS NULL AND reason IN ('bounced', 'complained');
CREATE TABLE ses_suppression_sync (
    id             smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    pulled_until   timestamptz
);
INSERT INTO ses_suppression_sync (id) VALUES (1);
