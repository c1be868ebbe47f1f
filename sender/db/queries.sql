-- Every statement the daemon runs, by name. Loaded once by sender.db.queries; parameters are
-- always bound ($n), never interpolated. Blocks start with a "-- name --" line; a block may
-- include another with /*@name*/ (used for fragments two statements share).

-- migrations_table --
CREATE TABLE IF NOT EXISTS sender_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- migrations_applied --
SELECT version FROM sender_migrations ORDER BY version

-- migration_record --
INSERT INTO sender_migrations (version) VALUES ($1)

-- instance_heartbeat --
-- The heartbeat, on its own connection and task: register or refresh this instance with its send
-- rate ($3) and the campaigns it is sending ($4), and list the live instances with theirs (for
-- /metrics and `sender campaign status`). Rows this instance holds stay valid while this row is
-- fresh, so nothing rewrites the held rows themselves (one write per second per instance instead
-- of one per held row).
WITH beat AS (
    INSERT INTO sender_instances (id, send_rate, campaigns) VALUES ($1, $3, $4)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), send_rate = $3, campaigns = $4
)
SELECT $1 AS id, $3::float8 AS send_rate, $4::bigint[] AS campaigns
UNION ALL
SELECT id, send_rate, campaigns FROM sender_instances
 WHERE id <> $1 AND heartbeat_at > now() - make_interval(secs => $2)

-- instance_forget --
DELETE FROM sender_instances WHERE id = $1 OR heartbeat_at < now() - interval '1 day'

-- tick_overview --
-- One round trip per tick: the account hold; the sending campaigns with their counters and
-- whether retries are due; and whether any queued campaign is due, any cancelled one unfinished
-- or any campaign still materialising, so the tick runs the statements that act on those only
-- when there is something to do.
SELECT h.reason AS hold_reason, h.code AS hold_code, h.set_by AS hold_set_by,
       EXISTS (SELECT 1 FROM campaigns WHERE status = 'queued'
                  AND (scheduled_at IS NULL OR scheduled_at <= now())) AS queued_due,
       EXISTS (SELECT 1 FROM campaigns WHERE status = 'cancelled' AND finished_at IS NULL) AS cancelling,
       EXISTS (SELECT 1 FROM campaigns WHERE materialised_at IS NULL
                  AND status IN ('sending', 'paused')) AS materialising,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'id', c.id, 'rate_per_sec', c.rate_per_sec::float8, 'total', c.total_count,
                    'sent', c.sent_count, 'failed', c.failed_count, 'skipped', c.skipped_count,
                    'materialised', c.materialised_at IS NOT NULL,
                    'retries_due', EXISTS (SELECT 1 FROM campaign_recipients r
                                            WHERE r.campaign_id = c.id AND r.status = 'pending'
                                              AND r.next_attempt_at IS NOT NULL AND r.next_attempt_at <= now()))
                    ORDER BY c.id)
                   FROM campaigns c WHERE c.status = 'sending'), '[]'::jsonb) AS sending
  FROM sender_account_hold h
 WHERE h.id = 1

-- rate_grant --
-- Up to $3 consecutive slots of budget $1 at $2/s, none sooner than $4 s nor more than $5 s ahead
-- (migration 0005).
SELECT db_now, start_in, granted, spacing, retry_in FROM sender_rate_grant($1, $2, $3, $4, $5, $6, $7)

-- rate_throttle --
-- A 429: cut budget $1 for every instance; returns the factor now in force.
SELECT sender_rate_throttle($1, $2, $3)

-- live_instances --
-- Instances whose heartbeat is younger than $1 s, with the send rate and campaigns they reported.
SELECT id, send_rate, campaigns FROM sender_instances
 WHERE heartbeat_at > now() - make_interval(secs => $1)
 ORDER BY id

-- campaign_share --
-- Renew instance $2's share of campaign $1's rate ($3 units; it enforces $4, counted $5 sends in its
-- last window, wants $6) for $7 s; units given up cool for $8 s. Returns the units it may use now,
-- and its fair share (migration 0006).
SELECT granted, fair FROM sender_campaign_share($1, $2, $3, $4, $5, $6, $7, $8)

-- campaign_shares_held --
-- Who holds units of campaign $1's rate now (for `sender campaign status`).
SELECT instance_id, units FROM sender_campaign_shares
 WHERE campaign_id = $1 AND held_until > now() AND units > 0
 ORDER BY instance_id

-- campaign_shares_forget --
-- After an instance gave a campaign up: rows long out of use, of any campaign, go.
DELETE FROM sender_campaign_shares
 WHERE held_until < now() - interval '10 minutes'
   AND (cooling_until IS NULL OR cooling_until < now() - interval '10 minutes')

-- account_hold_set --
UPDATE sender_account_hold SET reason = $1, code = $2, since = now(), set_by = $3
 WHERE id = 1 AND reason IS NULL

-- account_hold_clear --
UPDATE sender_account_hold SET reason = NULL, code = NULL, since = NULL, set_by = NULL WHERE id = 1

-- campaign_rows --
-- What starting or loading a campaign needs: the campaign and its template (absent when deleted).
SELECT c.id, c.name, c.status, c.template_id, c.subject AS campaign_subject, c.from_email,
       c.reply_to, c.target_rules, c.rate_per_sec::float8 AS rate_per_sec,
       t.id AS found_template_id, t.subject AS template_subject, t.content_html, t.content_text
  FROM campaigns c
  LEFT JOIN templates t ON t.id = c.template_id

-- load_campaign --
/*@campaign_rows*/
 WHERE c.id = $1

-- load_campaigns --
/*@campaign_rows*/
 WHERE c.id = ANY($1::bigint[])
 ORDER BY c.id

-- queued_take --
-- The first half of a batched start: up to $1 due queued campaigns, oldest first, locked for the
-- transaction that checks and starts them (SKIP LOCKED: two instances never take one campaign).
WITH picked AS MATERIALIZED (
    SELECT id FROM campaigns
     WHERE status = 'queued' AND (scheduled_at IS NULL OR scheduled_at <= now())
     ORDER BY coalesce(scheduled_at, created_at), id
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
/*@campaign_rows*/
 WHERE c.id = ANY(ARRAY(SELECT id FROM picked))
 ORDER BY c.id

-- campaigns_start_checked --
-- The second half: every campaign of the batch in one statement. A null error ($2) starts it:
-- recipients follow in chunks (materialise_chunk), or, with target_rules null, the main app
-- supplied them itself and there is nothing to materialise. An error fails it alone, with that
-- reason, before any mail goes out. $3 is this instance, which materialises what it started.
UPDATE campaigns c
   SET status = CASE WHEN t.error IS NULL THEN 'sending' ELSE 'failed' END,
       error = t.error,
       started_at = CASE WHEN t.error IS NULL THEN coalesce(c.started_at, now()) ELSE c.started_at END,
       finished_at = CASE WHEN t.error IS NULL THEN c.finished_at ELSE now() END,
       materialise_cursor = CASE WHEN t.error IS NULL THEN 0 ELSE c.materialise_cursor END,
       materialising_by = CASE WHEN t.error IS NULL THEN $3 ELSE c.materialising_by END,
       materialised_at = CASE WHEN t.error IS NOT NULL THEN c.materialised_at
                              WHEN c.target_rules IS NULL THEN now() END,
       total_count = CASE WHEN t.error IS NULL
                          THEN (SELECT count(*) FROM campaign_recipients r WHERE r.campaign_id = c.id)
                          ELSE c.total_count END,
       updated_at = now()
  FROM unnest($1::bigint[], $2::text[]) AS t(id, error)
 WHERE c.id = t.id

-- materialise_take --
-- A started campaign whose recipients are not all materialised and that this instance may work
-- on: its own, nobody's, or one whose materialiser's heartbeat is older than $2 seconds. The least
-- advanced first (its cursor is the last contact id scanned): campaigns take turns by chunk, so
-- one started after a big one waits for at most one chunk of it, never for all of it.
UPDATE campaigns k SET materialising_by = $1
  FROM (SELECT c.id FROM campaigns c
         WHERE c.materialised_at IS NULL AND c.status IN ('sending', 'paused')
           AND (c.materialising_by IS NULL OR c.materialising_by = $1
                OR NOT EXISTS (SELECT 1 FROM sender_instances i WHERE i.id = c.materialising_by
                                  AND i.heartbeat_at > now() - make_interval(secs => $2)))
         ORDER BY c.materialise_cursor, c.id
         LIMIT 1
           FOR UPDATE SKIP LOCKED) t
 WHERE k.id = t.id
RETURNING k.id, k.target_rules, k.materialise_cursor

-- materialise_chunk --
-- The next $3 subscribed contacts after the cursor $2, filtered by the campaign's rules
-- (/*RULES*/ is the predicate sender.targeting compiled: whitelisted columns, values bound from
-- $5 on). Each chunk scans at most $3 contacts, so no statement runs long whatever the rules
-- match; the cursor and the total move in the same statement, guarded by ownership ($4).
WITH span AS MATERIALIZED (
    SELECT id FROM contacts WHERE status = 'subscribed' AND id > $2 ORDER BY id LIMIT $3
), chunk AS (
    SELECT c.id, c.email FROM contacts c
     WHERE c.id = ANY(ARRAY(SELECT id FROM span)) AND c.status = 'subscribed' AND (/*RULES*/)
       AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = lower(c.email))
), added AS (
    INSERT INTO campaign_recipients (campaign_id, contact_id, email)
    SELECT $1, id, email FROM chunk ORDER BY id
        ON CONFLICT (campaign_id, sender_address_key(email)) DO NOTHING  -- migration 0003
    RETURNING 1
), progress AS (
    SELECT max(id) AS last_id, count(*) AS scanned FROM span
)
UPDATE campaigns k
   SET materialise_cursor = coalesce(p.last_id, k.materialise_cursor),
       total_count = k.total_count + (SELECT count(*) FROM added),
       materialised_at = CASE WHEN p.scanned < $3 THEN now() END,
       updated_at = now()
  FROM progress p
 WHERE k.id = $1 AND k.materialising_by = $4
RETURNING (SELECT count(*) FROM added) AS added, k.materialised_at IS NOT NULL AS done

-- campaign_fail --
UPDATE campaigns SET status = 'failed', error = $2, finished_at = now(), updated_at = now()
 WHERE id = $1

-- campaign_statuses --
SELECT id, status FROM campaigns WHERE id = ANY($1::bigint[])

-- claim_many --
-- One round trip claims for every campaign that asked: $1 campaign ids, $2 each one's keyset
-- bound, $3 how many rows each wants, $4 whether to take its rows due again first (retry backoff,
-- release, recovery). Due rows come first, then fresh rows in id order after the bound, so the scan
-- never walks the dead index entries earlier claims left at the front. The lease ($6 s) is set once
-- and never renewed: the row stays valid while this instance's heartbeat is fresh. No lock is held
-- once this returns. Each row comes back with its contact (by id, or by address when the main app
-- supplied the list); contact_deleted when the row names a contact that no longer exists;
-- suppressed when the address is on the suppression list (checked again at claim time, so an
-- address suppressed after materialising is still skipped); fresh when it was never tried (the
-- claimer moves its keyset bound past those only).
WITH wanted AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bool[]) AS w(campaign_id, after_id, n, due)
), due AS MATERIALIZED (
    SELECT w.campaign_id, p.id
      FROM wanted w
     CROSS JOIN LATERAL (
        SELECT id FROM campaign_recipients
         WHERE campaign_id = w.campaign_id AND status = 'pending' AND next_attempt_at IS NOT NULL
           AND next_attempt_at <= now() AND w.due
         ORDER BY next_attempt_at
         LIMIT w.n
           FOR UPDATE SKIP LOCKED) p
), fresh AS MATERIALIZED (
    SELECT p.id
      FROM wanted w
     CROSS JOIN LATERAL (
        SELECT id FROM campaign_recipients
         WHERE campaign_id = w.campaign_id AND status = 'pending' AND next_attempt_at IS NULL
           -- the bound as a row comparison only the fresh index (campaign_id, id) can serve: with a
           -- plain id > bound the planner may walk the primary key through other campaigns' rows
           AND (campaign_id, id) > (w.campaign_id, w.after_id)
         ORDER BY campaign_id, id
         LIMIT greatest(0, w.n - (SELECT count(*) FROM due d WHERE d.campaign_id = w.campaign_id))
           FOR UPDATE SKIP LOCKED) p
), claimed AS (
    UPDATE campaign_recipients r
       SET status = 'sending', claimed_by = $5, lease_until = now() + make_interval(secs => $6)
     WHERE r.id = ANY(ARRAY(SELECT id FROM due UNION ALL SELECT id FROM fresh))  -- primary-key lookups
    RETURNING r.id, r.campaign_id, r.contact_id, r.email, r.attempts, r.next_attempt_at IS NULL AS fresh
)
SELECT c.id, c.campaign_id, c.fresh, c.email, c.attempts, ct.first_name, ct.last_name, ct.country,
       ct.attributes, ct.status AS contact_status, (c.contact_id IS NOT NULL AND ct.id IS NULL) AS contact_deleted,
       -- a key probe per claimed row (LIMIT keeps the planner from hashing the whole list)
       coalesce((SELECT true FROM suppressions s WHERE s.email = lower(c.email) LIMIT 1), false) AS suppressed
  FROM claimed c
  LEFT JOIN contacts ct
    ON ct.id = coalesce(c.contact_id, (SELECT x.id FROM contacts x WHERE lower(x.email) = lower(c.email)))
 ORDER BY c.campaign_id, c.id

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

-- orphaned_rows --
-- The head both recoveries share: rows whose owner's heartbeat is older than $1 seconds, or whose
-- hard lease bound passed. $2 is this instance, which never takes its own rows by heartbeat: it
-- stops sending them itself when its heartbeat lapses.
WITH orphaned AS MATERIALIZED (
    SELECT r.id FROM campaign_recipients r
     WHERE r.status = 'sending'
       AND (r.lease_until < now()
            OR (r.claimed_by <> $2
                AND NOT EXISTS (SELECT 1 FROM sender_instances i WHERE i.id = r.claimed_by
                                   AND i.heartbeat_at > now() - make_interval(secs => $1))))
     LIMIT 5000 FOR UPDATE SKIP LOCKED
)

-- recover_orphans_retry --
-- Crash policy "retry": orphaned rows go back to pending (at-least-once).
/*@orphaned_rows*/
UPDATE campaign_recipients r
   SET status = 'pending', claimed_by = NULL, lease_until = NULL, next_attempt_at = now()
 WHERE r.id = ANY(ARRAY(SELECT id FROM orphaned))
RETURNING r.id

-- recover_orphans_fail --
-- Crash policy "fail": their outcome is unknown, so they are failed, never resent (at-most-once).
/*@orphaned_rows*/, done AS (
    UPDATE campaign_recipients r
       SET status = 'failed', claimed_by = NULL, lease_until = NULL, error_code = 'OutcomeUnknown',
           error = 'the instance sending this message stopped before recording the outcome'
     WHERE r.id = ANY(ARRAY(SELECT id FROM orphaned))
    RETURNING r.campaign_id
), bump AS (
    UPDATE campaigns c SET failed_count = c.failed_count + t.n, updated_at = now()
      FROM (SELECT campaign_id, count(*) AS n FROM done GROUP BY campaign_id ORDER BY campaign_id) t
     WHERE c.id = t.campaign_id
)
SELECT count(*) AS n FROM done

-- skip_cancelled --
-- Pending rows of cancelled campaigns end "skipped"; the campaign is finished when none is in flight.
-- One row per campaign touched: how many rows it skipped now, and whether it finished.
WITH cancelled AS (
    SELECT id FROM campaigns WHERE status = 'cancelled' AND finished_at IS NULL
), skipped AS (
    UPDATE campaign_recipients r
       SET status = 'skipped', error_code = 'CampaignCancelled', error = 'campaign cancelled',
           next_attempt_at = NULL
     WHERE r.campaign_id IN (SELECT id FROM cancelled) AND r.status = 'pending'
    RETURNING r.campaign_id
), tally AS (
    SELECT campaign_id, count(*) AS n FROM skipped GROUP BY campaign_id
), bump AS (
    UPDATE campaigns c SET skipped_count = c.skipped_count + t.n, updated_at = now()
      FROM tally t
     WHERE c.id = t.campaign_id
), finished AS (
    UPDATE campaigns c SET finished_at = now(), updated_at = now()
     WHERE c.id IN (SELECT id FROM cancelled)
       AND NOT EXISTS (SELECT 1 FROM campaign_recipients r
                        WHERE r.campaign_id = c.id AND r.status = 'sending')
       AND NOT EXISTS (SELECT 1 FROM skipped s WHERE s.campaign_id = c.id)
    RETURNING c.id
)
SELECT coalesce(t.campaign_id, f.id) AS id, coalesce(t.n, 0) AS skipped, f.id IS NOT NULL AS finished
  FROM tally t
  FULL JOIN finished f ON f.id = t.campaign_id

-- complete_campaigns --
-- A sending campaign is sent once it is fully materialised and nothing is pending or in flight.
-- Counters pre-filter the check.
UPDATE campaigns c SET status = 'sent', finished_at = now(), updated_at = now()
 WHERE c.status = 'sending' AND c.materialised_at IS NOT NULL
   AND (c.sent_count + c.failed_count + c.skipped_count >= c.total_count OR $1::bool)
   -- three probes shaped like the three partial indexes, so none scans the campaign's finished rows
   AND NOT EXISTS (SELECT 1 FROM campaign_recipients r
                    WHERE r.campaign_id = c.id AND r.status = 'pending' AND r.next_attempt_at IS NULL)
   AND NOT EXISTS (SELECT 1 FROM campaign_recipients r
                    WHERE r.campaign_id = c.id AND r.status = 'pending' AND r.next_attempt_at IS NOT NULL)
   AND NOT EXISTS (SELECT 1 FROM campaign_recipients r
                    WHERE r.campaign_id = c.id AND r.status = 'sending' AND r.lease_until IS NOT NULL)
RETURNING c.id, c.sent_count, c.failed_count, c.skipped_count

-- campaign_summary_rows --
-- A campaign's counters with what its progress line needs: in flight, first and last send.
SELECT c.id, c.name, c.status, c.error, c.rate_per_sec::float8 AS rate_per_sec, c.total_count,
       c.sent_count, c.failed_count, c.skipped_count, c.scheduled_at, c.started_at, c.finished_at,
       (SELECT count(*) FROM campaign_recipients r
         WHERE r.campaign_id = c.id AND r.status = 'sending') AS in_flight,
       (SELECT min(sent_at) FROM campaign_recipients r
         WHERE r.campaign_id = c.id AND r.status = 'sent') AS first_sent_at,
       (SELECT max(sent_at) FROM campaign_recipients r
         WHERE r.campaign_id = c.id AND r.status = 'sent') AS last_sent_at
  FROM campaigns c

-- campaign_summary --
/*@campaign_summary_rows*/
 WHERE c.id = $1

-- campaign_summaries --
/*@campaign_summary_rows*/
 WHERE c.id = ANY($1::bigint[])

-- campaigns_by_status --
-- `sender campaign status` without an id, first: campaigns per status with their counters added
-- up, and the sending ones' rate since each started (counters only: cheap with thousands).
SELECT status, count(*) AS campaigns, coalesce(sum(total_count), 0)::bigint AS total,
       coalesce(sum(sent_count), 0)::bigint AS sent, coalesce(sum(failed_count), 0)::bigint AS failed,
       coalesce(sum(skipped_count), 0)::bigint AS skipped,
       coalesce(sum(sent_count / greatest(extract(epoch FROM now() - started_at), 1.0))
                FILTER (WHERE status = 'sending' AND started_at IS NOT NULL), 0)::float8 AS rate
  FROM campaigns
 GROUP BY status
 ORDER BY status

-- campaigns_active_ids --
-- Then the active ones: sending, paused, queued (in that order, then by id), $1 at most (NULL: all).
SELECT id FROM campaigns
 WHERE status IN ('sending', 'paused', 'queued')
 ORDER BY CASE status WHEN 'sending' THEN 0 WHEN 'paused' THEN 1 ELSE 2 END, id
 LIMIT $1

-- campaigns_finished_ids --
-- Then the most recently finished or changed of the rest, $1 at most (NULL: all).
SELECT id FROM campaigns
 WHERE status NOT IN ('sending', 'paused', 'queued')
 ORDER BY coalesce(finished_at, updated_at) DESC, id DESC
 LIMIT $1

-- campaign_recipients_by_status --
SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = $1 GROUP BY status

-- campaign_status --
SELECT status FROM campaigns WHERE id = $1

-- contact_by_email --
SELECT first_name, last_name, country, attributes FROM contacts WHERE lower(email) = lower($1)

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

-- release_unknown --
-- After a claim whose reply was lost (timeout, dropped connection): rows this instance holds in
-- the database but not in memory ($2 lists every row it does hold) go back to pending unsent.
UPDATE campaign_recipients
   SET status = 'pending', claimed_by = NULL, lease_until = NULL, next_attempt_at = now()
 WHERE status = 'sending' AND claimed_by = $1 AND NOT (id = ANY($2::bigint[]))
RETURNING id
-- ===== production PostgreSQL (issue 17): migration lock, retention (sender prune) =====

-- migration_lock --
-- Transaction-scoped, so it is released by COMMIT on the server connection that took it, even
-- behind PgBouncer in transaction mode.
SELECT pg_advisory_xact_lock($1)

-- prune_candidates --
-- Campaigns whose recipient rows may go: finished (sent, or cancelled and settled) before $1, and
-- still holding rows. Failed campaigns are kept: `sender campaign send` can resume them, and
-- re-materialising over deleted rows would send to everyone again.
SELECT c.id, c.name, c.status, c.finished_at,
       (SELECT count(*) FROM campaign_recipients r WHERE r.campaign_id = c.id) AS recipients
  FROM campaigns c
 WHERE c.status IN ('sent', 'cancelled') AND c.finished_at IS NOT NULL AND c.finished_at < $1
   AND EXISTS (SELECT 1 FROM campaign_recipients r WHERE r.campaign_id = c.id)
 ORDER BY c.finished_at, c.id

-- prune_recipients_chunk --
-- One short transaction: up to $3 rows of one campaign, re-checked as finished before $2 in the
-- same statement (a campaign re-queued meanwhile is left alone). Rows are looked up by primary
-- key; locked rows are skipped rather than waited for, so prune never queues behind sending.
WITH doomed AS MATERIALIZED (
    SELECT r.id FROM campaign_recipients r
     WHERE r.campaign_id = $1
       AND EXISTS (SELECT 1 FROM campaigns c
                    WHERE c.id = $1 AND c.status IN ('sent', 'cancelled')
                      AND c.finished_at IS NOT NULL AND c.finished_at < $2)
     LIMIT $3
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM campaign_recipients
     WHERE id = ANY(ARRAY(SELECT id FROM doomed))
    RETURNING 1
)
SELECT count(*) FROM gone
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

-- ===== the demo: it stands in for the main app, which seeds contacts, a template and campaigns =====

-- demo_seed_contacts --
INSERT INTO contacts (email, first_name, last_name, country, attributes)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])

-- demo_seed_template --
INSERT INTO templates (name, subject, content_html) VALUES ($1, $2, $3) RETURNING id

-- demo_queue_campaign --
INSERT INTO campaigns (name, template_id, target_rules, status) VALUES ($1, $2, $3, 'queued') RETURNING id

-- demo_campaign_events --
SELECT delivered_count, hard_bounced_count, complained_count, unsubscribed_count, template_id
  FROM campaigns WHERE id = $1

-- campaign_total --
SELECT total_count FROM campaigns WHERE id = $1

-- contacts_count --
SELECT count(*) FROM contacts

-- prune_cutoff --
SELECT now() - $1::interval
