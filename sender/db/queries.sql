-- Every statement the daemon runs, by name. Loaded once by sender.db.queries; parameters are
-- always bound ($n), never interpolated. Blocks start with a "-- name --" line.

-- migrations_table --
CREATE TABLE IF NOT EXISTS sender_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- migrations_applied --
SELECT version FROM sender_migrations ORDER BY version

-- migration_record --
INSERT INTO sender_migrations (version) VALUES ($1)

-- instance_forget --
DELETE FROM sender_instances WHERE id = $1 OR heartbeat_at < now() - interval '1 day'

-- tick_overview --
-- One round trip per tick: register or refresh this instance and renew the leases on the rows it
-- holds; count live instances (each takes an equal share of the account rate); read the account
-- hold; list the sending campaigns with their counters and whether retries are due; and say
-- whether any queued campaign is due or any cancelled one unfinished, so the tick runs the
-- statements that act on those only when there is something to do.
WITH beat AS (
    INSERT INTO sender_instances (id) VALUES ($1)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
), renewed AS (
    UPDATE campaign_recipients
       SET lease_until = now() + make_interval(secs => $2)
     WHERE status = 'sending' AND claimed_by = $1
    RETURNING 1
)
SELECT 1 + (SELECT count(*) FROM sender_instances
             WHERE id <> $1 AND heartbeat_at > now() - make_interval(secs => $3)) AS live,
       h.reason AS hold_reason, h.code AS hold_code, h.set_by AS hold_set_by,
       EXISTS (SELECT 1 FROM campaigns WHERE status = 'queued'
                  AND (scheduled_at IS NULL OR scheduled_at <= now())) AS queued_due,
       EXISTS (SELECT 1 FROM campaigns WHERE status = 'cancelled' AND finished_at IS NULL) AS cancelling,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'id', c.id, 'rate_per_sec', c.rate_per_sec::float8, 'total', c.total_count,
                    'sent', c.sent_count, 'failed', c.failed_count, 'skipped', c.skipped_count,
                    'retries_due', EXISTS (SELECT 1 FROM campaign_recipients r
                                            WHERE r.campaign_id = c.id AND r.status = 'pending'
                                              AND r.next_attempt_at IS NOT NULL AND r.next_attempt_at <= now()))
                    ORDER BY c.id)
                   FROM campaigns c WHERE c.status = 'sending'), '[]'::jsonb) AS sending
  FROM sender_account_hold h
 WHERE h.id = 1

-- account_hold_set --
UPDATE sender_account_hold SET reason = $1, code = $2, since = now(), set_by = $3
 WHERE id = 1 AND reason IS NULL

-- account_hold_clear --
UPDATE sender_account_hold SET reason = NULL, code = NULL, since = NULL, set_by = NULL WHERE id = 1

-- next_queued_campaign --
-- Taken inside the transaction that materialises it, so two instances never start one campaign.
SELECT id FROM campaigns
 WHERE status = 'queued' AND (scheduled_at IS NULL OR scheduled_at <= now())
 ORDER BY coalesce(scheduled_at, created_at), id
 LIMIT 1
   FOR UPDATE SKIP LOCKED

-- load_campaign --
SELECT c.id, c.name, c.status, c.template_id, c.subject AS campaign_subject, c.from_email,
       c.reply_to, c.target_rules, c.rate_per_sec::float8 AS rate_per_sec,
       t.id AS found_template_id, t.subject AS template_subject, t.content_html, t.content_text
  FROM campaigns c
  LEFT JOIN templates t ON t.id = c.template_id
 WHERE c.id = $1

-- materialise_recipients --
-- /*RULES*/ is replaced by the predicate sender.targeting compiled (whitelisted columns, $n values).
INSERT INTO campaign_recipients (campaign_id, contact_id, email)
SELECT $1, c.id, c.email
  FROM contacts c
 WHERE c.status = 'subscribed' AND (/*RULES*/)
   AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = lower(c.email))
 ORDER BY c.id
    ON CONFLICT (campaign_id, lower(email)) DO NOTHING

-- campaign_start --
UPDATE campaigns c
   SET status = 'sending', started_at = coalesce(c.started_at, now()), error = NULL,
       total_count = (SELECT count(*) FROM campaign_recipients r WHERE r.campaign_id = c.id),
       updated_at = now()
 WHERE c.id = $1
RETURNING c.total_count

-- campaign_fail --
UPDATE campaigns SET status = 'failed', error = $2, finished_at = now(), updated_at = now()
 WHERE id = $1

-- campaign_statuses --
SELECT id, status FROM campaigns WHERE id = ANY($1::bigint[])

-- claim_fresh --
-- Fresh rows in id order after a keyset bound: the scan never walks the dead index entries
-- that earlier claims left at the front. No lock is held once this returns.
WITH picked AS MATERIALIZED (
    SELECT id FROM campaign_recipients
     WHERE campaign_id = $1 AND status = 'pending' AND next_attempt_at IS NULL AND id > $2
     ORDER BY id
     LIMIT $3
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE campaign_recipients r
       SET status = 'sending', claimed_by = $4, lease_until = now() + make_interval(secs => $5)
     WHERE r.id = ANY(ARRAY(SELECT id FROM picked))  -- primary-key lookups, never a join scan
    RETURNING r.id, r.contact_id, r.email, r.attempts
)
SELECT c.id, c.email, c.attempts, ct.first_name, ct.last_name, ct.country, ct.attributes,
       ct.status AS contact_status,
       -- a key probe per claimed row (LIMIT keeps the planner from hashing the whole list)
       coalesce((SELECT true FROM suppressions s WHERE s.email = lower(c.email) LIMIT 1), false) AS suppressed
  FROM claimed c
  LEFT JOIN contacts ct
    ON ct.id = coalesce(c.contact_id, (SELECT x.id FROM contacts x WHERE lower(x.email) = lower(c.email)))
 ORDER BY c.id

-- claim_due --
-- Rows that came back to pending (retry backoff, release, recovery) once they are due.
WITH picked AS MATERIALIZED (
    SELECT id FROM campaign_recipients
     WHERE campaign_id = $1 AND status = 'pending' AND next_attempt_at IS NOT NULL
       AND next_attempt_at <= now()
     ORDER BY next_attempt_at
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE campaign_recipients r
       SET status = 'sending', claimed_by = $3, lease_until = now() + make_interval(secs => $4)
     WHERE r.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING r.id, r.contact_id, r.email, r.attempts
)
SELECT c.id, c.email, c.attempts, ct.first_name, ct.last_name, ct.country, ct.attributes,
       ct.status AS contact_status,
       -- a key probe per claimed row (LIMIT keeps the planner from hashing the whole list)
       coalesce((SELECT true FROM suppressions s WHERE s.email = lower(c.email) LIMIT 1), false) AS suppressed
  FROM claimed c
  LEFT JOIN contacts ct
    ON ct.id = coalesce(c.contact_id, (SELECT x.id FROM contacts x WHERE lower(x.email) = lower(c.email)))
 ORDER BY c.id

-- write_back --
-- One round trip for a batch of outcomes. Only rows this instance still holds change, and the
-- campaign counters move by exactly the rows that did.
WITH outcome AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::int[], $8::float8[], $9::timestamptz[])
        AS t(id, status, message_id, error_code, error, attempts, retry_in, sent_at)
), done AS (
    UPDATE campaign_recipients r
       SET status = o.status, message_id = o.message_id, error_code = o.error_code,
           error = o.error, attempts = o.attempts, sent_at = o.sent_at,
           next_attempt_at = CASE WHEN o.retry_in IS NULL THEN NULL
                                  ELSE now() + make_interval(secs => o.retry_in) END,
           claimed_by = NULL, lease_until = NULL
      FROM outcome o
     WHERE r.id = o.id AND r.status = 'sending' AND r.claimed_by = $1
    RETURNING r.campaign_id, r.status
), tally AS (
    SELECT campaign_id,
           count(*) FILTER (WHERE status = 'sent') AS sent,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'skipped') AS skipped,
           count(*) AS written
      FROM done GROUP BY campaign_id
), bump AS (
    UPDATE campaigns c
       SET sent_count = c.sent_count + t.sent, failed_count = c.failed_count + t.failed,
           skipped_count = c.skipped_count + t.skipped, updated_at = now()
      FROM tally t
     WHERE c.id = t.campaign_id AND t.sent + t.failed + t.skipped > 0
)
SELECT coalesce(sum(written), 0)::bigint AS written FROM tally

-- recover_expired_retry --
-- Crash policy "retry": rows a dead instance left leased go back to pending (at-least-once).
WITH expired AS MATERIALIZED (
    SELECT id FROM campaign_recipients
     WHERE status = 'sending' AND lease_until < now()
     LIMIT 5000 FOR UPDATE SKIP LOCKED
)
UPDATE campaign_recipients r
   SET status = 'pending', claimed_by = NULL, lease_until = NULL, next_attempt_at = now()
 WHERE r.id = ANY(ARRAY(SELECT id FROM expired))
RETURNING r.id

-- recover_expired_fail --
-- Crash policy "fail": their outcome is unknown, so they are failed, never resent (at-most-once).
WITH expired AS MATERIALIZED (
    SELECT id FROM campaign_recipients
     WHERE status = 'sending' AND lease_until < now()
     LIMIT 5000 FOR UPDATE SKIP LOCKED
), done AS (
    UPDATE campaign_recipients r
       SET status = 'failed', claimed_by = NULL, lease_until = NULL, error_code = 'OutcomeUnknown',
           error = 'the instance sending this message stopped before recording the outcome'
     WHERE r.id = ANY(ARRAY(SELECT id FROM expired))
    RETURNING r.campaign_id
), bump AS (
    UPDATE campaigns c SET failed_count = c.failed_count + t.n, updated_at = now()
      FROM (SELECT campaign_id, count(*) AS n FROM done GROUP BY campaign_id) t
     WHERE c.id = t.campaign_id
)
SELECT count(*) AS n FROM done

-- skip_cancelled --
-- Pending rows of cancelled campaigns end "skipped"; the campaign is finished when none is in flight.
WITH cancelled AS (
    SELECT id FROM campaigns WHERE status = 'cancelled' AND finished_at IS NULL
), skipped AS (
    UPDATE campaign_recipients r
       SET status = 'skipped', error_code = 'CampaignCancelled', error = 'campaign cancelled',
           next_attempt_at = NULL
     WHERE r.campaign_id IN (SELECT id FROM cancelled) AND r.status = 'pending'
    RETURNING r.campaign_id
), bump AS (
    UPDATE campaigns c SET skipped_count = c.skipped_count + t.n, updated_at = now()
      FROM (SELECT campaign_id, count(*) AS n FROM skipped GROUP BY campaign_id) t
     WHERE c.id = t.campaign_id
)
UPDATE campaigns c SET finished_at = now(), updated_at = now()
 WHERE c.id IN (SELECT id FROM cancelled)
   AND NOT EXISTS (SELECT 1 FROM campaign_recipients r
                    WHERE r.campaign_id = c.id AND r.status = 'sending')
   AND NOT EXISTS (SELECT 1 FROM skipped s WHERE s.campaign_id = c.id)
RETURNING c.id

-- complete_campaigns --
-- A sending campaign is sent once nothing is pending or in flight. Counters pre-filter the check.
UPDATE campaigns c SET status = 'sent', finished_at = now(), updated_at = now()
 WHERE c.status = 'sending'
   AND (c.sent_count + c.failed_count + c.skipped_count >= c.total_count OR $1::bool)
   -- three probes shaped like the three partial indexes, so none scans the campaign's finished rows
   AND NOT EXISTS (SELECT 1 FROM campaign_recipients r
                    WHERE r.campaign_id = c.id AND r.status = 'pending' AND r.next_attempt_at IS NULL)
   AND NOT EXISTS (SELECT 1 FROM campaign_recipients r
                    WHERE r.campaign_id = c.id AND r.status = 'pending' AND r.next_attempt_at IS NOT NULL)
   AND NOT EXISTS (SELECT 1 FROM campaign_recipients r
                    WHERE r.campaign_id = c.id AND r.status = 'sending' AND r.lease_until IS NOT NULL)
RETURNING c.id, c.sent_count, c.failed_count, c.skipped_count

-- campaign_summary --
SELECT c.id, c.name, c.status, c.error, c.rate_per_sec::float8 AS rate_per_sec, c.total_count,
       c.sent_count, c.failed_count, c.skipped_count, c.scheduled_at, c.started_at, c.finished_at,
       (SELECT count(*) FROM campaign_recipients r
         WHERE r.campaign_id = c.id AND r.status = 'sending') AS in_flight,
       (SELECT min(sent_at) FROM campaign_recipients r
         WHERE r.campaign_id = c.id AND r.status = 'sent') AS first_sent_at,
       (SELECT max(sent_at) FROM campaign_recipients r
         WHERE r.campaign_id = c.id AND r.status = 'sent') AS last_sent_at
  FROM campaigns c
 WHERE c.id = $1

-- campaign_set_status --
-- CLI and admin API transitions; the WHERE keeps them legal (returns nothing when not allowed).
UPDATE campaigns
   SET status = CASE WHEN $2 = 'resume' THEN (CASE WHEN started_at IS NULL THEN 'queued' ELSE 'sending' END)
                     WHEN $2 = 'send' THEN 'queued'
                     ELSE $2 END,
       rate_per_sec = coalesce($3::numeric, rate_per_sec),
       finished_at = CASE WHEN $2 IN ('send') THEN NULL ELSE finished_at END,
       error = CASE WHEN $2 IN ('send') THEN NULL ELSE error END,
       updated_at = now()
 WHERE id = $1
   AND CASE $2
         WHEN 'send' THEN status IN ('draft', 'paused', 'failed', 'queued')
         WHEN 'paused' THEN status IN ('queued', 'sending')
         WHEN 'resume' THEN status = 'paused'
         WHEN 'cancelled' THEN status IN ('draft', 'queued', 'sending', 'paused')
         ELSE false
       END
RETURNING id, status

-- release_held --
-- Shutdown: whatever this instance still holds goes back to pending for anyone to send.
UPDATE campaign_recipients
   SET status = 'pending', claimed_by = NULL, lease_until = NULL, next_attempt_at = now()
 WHERE status = 'sending' AND claimed_by = $1
RETURNING id

-- ===== deliverability (issue 11): unsubscribe, suppression, SES events, account guard =====

-- unsubscribe_lookup --
-- The recipient a genuine unsubscribe token names, and its campaign's name for the page.
SELECT r.email, c.name AS campaign_name
  FROM campaign_recipients r
  JOIN campaigns c ON c.id = r.campaign_id
 WHERE r.id = $2 AND r.campaign_id = $1

-- unsubscribe_apply --
-- One-click unsubscribe: the contact (if still subscribed) becomes unsubscribed with when and from
-- which campaign, the recipient row records it once, the campaign counts it once, and the
-- normalised address ($3) is suppressed. Idempotent: a second POST changes nothing but last_seen.
WITH r AS (
    SELECT id, campaign_id, contact_id, email FROM campaign_recipients WHERE id = $2 AND campaign_id = $1
), ct AS (
    UPDATE contacts c
       SET status = 'unsubscribed', unsubscribed_at = now(), unsubscribed_campaign_id = $1, updated_at = now()
      FROM r
     WHERE c.id = coalesce(r.contact_id, (SELECT x.id FROM contacts x WHERE lower(x.email) = lower(r.email)))
       AND c.status = 'subscribed'
    RETURNING c.id
), rr AS (
    UPDATE campaign_recipients x SET unsubscribed_at = now()
      FROM r WHERE x.id = r.id AND x.unsubscribed_at IS NULL
    RETURNING x.campaign_id
), bump AS (
    UPDATE campaigns c SET unsubscribed_count = c.unsubscribed_count + 1, updated_at = now()
     WHERE c.id IN (SELECT campaign_id FROM rr)
), sup AS (
    INSERT INTO suppressions AS s (email, reason, source, campaign_id)
    SELECT $3, 'unsubscribed', 'unsubscribe_link', $1 FROM r
        ON CONFLICT (email) DO UPDATE SET last_seen = now()
)
SELECT (SELECT count(*) FROM r) AS found, (SELECT count(*) FROM rr) AS newly

-- suppress_many --
-- Upsert suppressions from parallel arrays; the first reason recorded for an address stays,
-- later sightings move last_seen. DISTINCT ON: one address twice in a batch is one row.
INSERT INTO suppressions AS s (email, reason, source, detail, campaign_id)
SELECT DISTINCT ON (email) email, reason, source, detail, campaign_id
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
    AS t(email, reason, source, detail, campaign_id)
 ORDER BY email
    ON CONFLICT (email) DO UPDATE SET last_seen = now(),
       detail = coalesce(EXCLUDED.detail, s.detail)
RETURNING (xmax = 0) AS inserted

-- suppress_remove --
DELETE FROM suppressions WHERE email = ANY($1::text[]) RETURNING email

-- suppress_list --
-- Keyset pagination by address, so an export of millions streams in pages.
SELECT email, reason, source, detail, campaign_id, first_seen, last_seen
  FROM suppressions
 WHERE email > $1 AND ($3::text IS NULL OR reason = $3)
 ORDER BY email
 LIMIT $2

-- suppress_count --
SELECT reason, count(*) AS n FROM suppressions GROUP BY reason ORDER BY reason

-- events_record --
-- Event identities seen for the first time in this batch; the rest are replays and change nothing.
INSERT INTO ses_events (event_key, event_type, message_id, email)
SELECT DISTINCT ON (event_key) event_key, event_type, message_id, email
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(event_key, event_type, message_id, email)
 ORDER BY event_key
    ON CONFLICT (event_key) DO NOTHING
RETURNING event_key

-- events_apply_recipients --
-- A batch of fresh effects onto their recipient rows, matched by SES message id, else by the
-- campaign_id/recipient_id tags (checked against the address). Each column is set once, so order
-- does not matter and a late Delivery never clears a Bounce; a Permanent bounce upgrades a soft one.
-- Campaign counters move by the rows whose state changed, in the same statement.
WITH ev AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::timestamptz[], $6::text[],
                         $7::text[])
        AS t(kind, message_id, campaign_id, recipient_id, at, detail, email)
), matched AS (
    -- LATERAL lookups: one index probe per event, never a hash of the whole table
    SELECT coalesce(m.id, g.id) AS rid, ev.kind, coalesce(ev.at, now()) AS at, ev.detail
      FROM ev
      LEFT JOIN LATERAL (SELECT r.id FROM campaign_recipients r
                          WHERE r.message_id = ev.message_id LIMIT 1) m ON true
      LEFT JOIN LATERAL (SELECT r.id FROM campaign_recipients r
                          WHERE m.id IS NULL AND r.id = ev.recipient_id AND r.campaign_id = ev.campaign_id
                            AND lower(r.email) = ev.email) g ON true
), locked AS (
    SELECT r.id, r.delivered_at, r.bounce_type, r.complained_at, r.unsubscribed_at
      FROM campaign_recipients r
     WHERE r.id = ANY(ARRAY(SELECT rid FROM matched WHERE rid IS NOT NULL))
     ORDER BY r.id
       FOR UPDATE
), agg AS (
    SELECT m.rid,
           min(m.at) FILTER (WHERE m.kind = 'delivered') AS delivered,
           min(m.at) FILTER (WHERE m.kind IN ('hard_bounce', 'soft_bounce')) AS bounced,
           bool_or(m.kind = 'hard_bounce') AS hard,
           min(m.detail) FILTER (WHERE m.kind = 'hard_bounce') AS hard_detail,
           min(m.detail) FILTER (WHERE m.kind = 'soft_bounce') AS soft_detail,
           min(m.at) FILTER (WHERE m.kind = 'complaint') AS complained,
           min(m.detail) FILTER (WHERE m.kind = 'complaint') AS complaint_type,
           min(m.at) FILTER (WHERE m.kind = 'unsubscribe') AS unsubscribed,
           min(m.at) FILTER (WHERE m.kind = 'delay') AS delayed,
           min(m.kind || ': ' || coalesce(m.detail, '')) FILTER (WHERE m.kind IN ('reject', 'rendering_failure'))
               AS error
      FROM matched m
     WHERE m.rid IS NOT NULL
     GROUP BY m.rid
), upd AS (
    UPDATE campaign_recipients r
       SET delivered_at = coalesce(r.delivered_at, a.delivered),
           bounced_at = coalesce(r.bounced_at, a.bounced),
           bounce_type = CASE WHEN a.hard AND coalesce(r.bounce_type, '') NOT LIKE 'Permanent%' THEN a.hard_detail
                              ELSE coalesce(r.bounce_type, a.soft_detail) END,
           complained_at = coalesce(r.complained_at, a.complained),
           complaint_type = coalesce(r.complaint_type, a.complaint_type),
           unsubscribed_at = coalesce(r.unsubscribed_at, a.unsubscribed),
           delayed_at = coalesce(r.delayed_at, a.delayed),
           event_error = coalesce(r.event_error, a.error)
      FROM agg a
      JOIN locked l ON l.id = a.rid
     WHERE r.id = a.rid
    RETURNING r.campaign_id,
              (l.delivered_at IS NULL AND a.delivered IS NOT NULL)::int AS delivered,
              (a.hard AND coalesce(l.bounce_type, '') NOT LIKE 'Permanent%')::int AS hard_bounced,
              (l.bounce_type IS NULL AND NOT a.hard AND a.bounced IS NOT NULL)::int AS soft_bounced,
              (l.complained_at IS NULL AND a.complained IS NOT NULL)::int AS complained,
              (l.unsubscribed_at IS NULL AND a.unsubscribed IS NOT NULL)::int AS unsubscribed
), tally AS (
    SELECT campaign_id, sum(delivered)::int AS delivered, sum(hard_bounced)::int AS hard_bounced,
           sum(soft_bounced)::int AS soft_bounced, sum(complained)::int AS complained,
           sum(unsubscribed)::int AS unsubscribed
      FROM upd GROUP BY campaign_id
), bump AS (
    UPDATE campaigns c
       SET delivered_count = c.delivered_count + t.delivered,
           hard_bounced_count = c.hard_bounced_count + t.hard_bounced,
           soft_bounced_count = c.soft_bounced_count + t.soft_bounced,
           complained_count = c.complained_count + t.complained,
           unsubscribed_count = c.unsubscribed_count + t.unsubscribed
      FROM tally t
     WHERE c.id = t.campaign_id
       AND t.delivered + t.hard_bounced + t.soft_bounced + t.complained + t.unsubscribed > 0
)
SELECT * FROM tally

-- events_apply_contacts --
-- Contacts by address: a complaint wins over a bounce, a bounce over an unsubscribe; never downgraded.
WITH e AS (
    SELECT email, bool_or(kind = 'complaint') AS complained, bool_or(kind = 'hard_bounce') AS bounced,
           bool_or(kind = 'unsubscribe') AS unsubscribed
      FROM unnest($1::text[], $2::text[]) AS t(kind, email)
     GROUP BY email
), target AS (
    SELECT c.id,
           CASE WHEN e.complained THEN 'complained'
                WHEN e.bounced AND c.status IN ('subscribed', 'unsubscribed') THEN 'bounced'
                WHEN e.unsubscribed AND c.status = 'subscribed' THEN 'unsubscribed'
                ELSE c.status END AS status
      FROM e JOIN contacts c ON lower(c.email) = e.email
)
UPDATE contacts c
   SET status = t.status, updated_at = now(),
       unsubscribed_at = CASE WHEN t.status = 'unsubscribed' THEN now() ELSE c.unsubscribed_at END
  FROM target t
 WHERE c.id = t.id AND c.status <> t.status

-- events_soft_bounces_over --
-- Addresses that reached the soft-bounce limit within the window (the suppression rule).
SELECT email, count(*) AS n
  FROM ses_events
 WHERE event_type = 'soft_bounce' AND email = ANY($1::text[])
   AND received_at > now() - make_interval(secs => $2::float8 * 86400)
 GROUP BY email
HAVING count(*) >= $3

-- events_prune --
DELETE FROM ses_events WHERE received_at < now() - make_interval(secs => $1::float8 * 86400)

-- campaign_deliverability --
-- What SES reported per campaign, and what the guard did (campaign status, admin API).
SELECT id, sent_count, delivered_count, hard_bounced_count, soft_bounced_count, complained_count,
       unsubscribed_count, paused_reason
  FROM campaigns
 WHERE id = ANY($1::bigint[])

-- guard_campaigns --
-- Sending campaigns with enough sends to judge, not resumed by an operator after a guard pause.
SELECT id, sent_count, hard_bounced_count, complained_count
  FROM campaigns
 WHERE status = 'sending' AND paused_reason IS NULL AND sent_count >= $1

-- guard_account --
-- Account-wide rates over the most recent campaigns that together hold at least $1 sends.
WITH recent AS (
    SELECT sent_count, hard_bounced_count, complained_count,
           sum(sent_count) OVER (ORDER BY coalesce(started_at, created_at) DESC, id DESC) AS running
      FROM campaigns
     WHERE sent_count > 0
)
SELECT coalesce(sum(sent_count), 0)::bigint AS sent, coalesce(sum(hard_bounced_count), 0)::bigint AS bounced,
       coalesce(sum(complained_count), 0)::bigint AS complained
  FROM recent
 WHERE running - sent_count < $1

-- guard_pause --
-- The guard pauses campaigns (one, or with $1 NULL every queued/sending one not exempted) and says why.
UPDATE campaigns
   SET status = 'paused', paused_reason = $2, updated_at = now()
 WHERE status IN ('queued', 'sending') AND paused_reason IS NULL AND ($1::bigint IS NULL OR id = $1)
RETURNING id

-- guard_paused --
-- Campaigns paused by the guard and still paused (for /readyz details).
SELECT id, paused_reason FROM campaigns WHERE status = 'paused' AND paused_reason IS NOT NULL ORDER BY id

-- ses_sync_unpushed --
-- Local hard suppressions not yet on the SES account-level list.
SELECT email, reason FROM suppressions
 WHERE ses_synced_at IS NULL AND reason IN ('bounced', 'complained')
 ORDER BY first_seen
 LIMIT $1

-- ses_sync_mark_pushed --
UPDATE suppressions SET ses_synced_at = now() WHERE email = ANY($1::text[])

-- ses_sync_pulled_until --
SELECT pulled_until FROM ses_suppression_sync WHERE id = 1

-- ses_sync_set_pulled_until --
UPDATE ses_suppression_sync SET pulled_until = $1 WHERE id = 1
