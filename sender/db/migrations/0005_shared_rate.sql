-- Shared send budgets: every instance takes its sends from one row per budget, so any number of
-- instances share the SES account cap (and each campaign's rate_per_sec) exactly.
--
-- A budget is a GCRA with no burst: `tat` is the next free slot, slots are 1/rate apart, and a
-- grant hands out n consecutive slots in one statement. Instances send each token within a few
-- milliseconds of its slot or drop it (sender.shared_rate), so the sends of all instances together
-- are as far apart as the slots: no one-second window can hold more than the cap. A token granted
-- to an instance that dies is simply never used; it is never handed out twice.
--
-- Throttling feedback is shared too: a 429 seen by any instance cuts `factor` for all of them, and
-- the cut wears off once throttling has been quiet (recovery is computed, never written back).
CREATE TABLE sender_rate_budgets (
    key          text PRIMARY KEY,                         -- 'account', or 'campaign:<id>'
    tat          timestamptz NOT NULL DEFAULT clock_timestamp(),
    factor       float8 NOT NULL DEFAULT 1.0 CHECK (factor > 0 AND factor <= 1),
    cut_at       timestamptz,
    grants       bigint NOT NULL DEFAULT 0,
    tokens       bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The throttling factor in force at `at`: the last cut, regained at p_recovery per second once
-- throttling has been quiet for p_quiet seconds.
CREATE FUNCTION sender_rate_factor(p_factor float8, p_cut_at timestamptz, p_at timestamptz,
                                   p_recovery float8, p_quiet float8) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_cut_at IS NULL THEN 1.0
                ELSE least(1.0, p_factor + p_recovery
                                * greatest(0.0, extract(epoch FROM p_at - p_cut_at)::float8 - p_quiet))
           END
$$;

-- Grant up to p_wanted slots of budget p_key at p_rate per second, none earlier than p_lead
-- seconds from now (the reply's way back: a slot must not be stale on arrival) nor later than
-- p_horizon seconds from now. Returns the database's clock (epoch seconds), when the first slot
-- is (seconds from that), how many slots, their spacing, and when to ask again if none was granted.
CREATE FUNCTION sender_rate_grant(p_key text, p_rate float8, p_wanted int, p_lead float8, p_horizon float8,
                                  p_recovery float8, p_quiet float8)
RETURNS TABLE (db_now float8, start_in float8, granted int, spacing float8, retry_in float8)
LANGUAGE plpgsql AS $$
DECLARE
    b sender_rate_budgets%ROWTYPE;
    t timestamptz := clock_timestamp();
    rate float8;
    first_slot timestamptz;
    ahead float8;
    n int;
BEGIN
    INSERT INTO sender_rate_budgets (key, tat) VALUES (p_key, t) ON CONFLICT (key) DO NOTHING;
    SELECT * INTO b FROM sender_rate_budgets WHERE key = p_key FOR UPDATE;
    t := clock_timestamp();  -- after the lock: slots are never placed in the past of another grant
    rate := p_rate * sender_rate_factor(b.factor, b.cut_at, t, p_recovery, p_quiet);
    first_slot := greatest(b.tat, t + make_interval(secs => p_lead));
    ahead := extract(epoch FROM first_slot - t)::float8;
    n := least(p_wanted, ceil((p_horizon - ahead) * rate)::int);
    IF n < 1 THEN
        RETURN QUERY SELECT extract(epoch FROM t)::float8, ahead, 0, 1.0 / rate, ahead - p_horizon + 0.001;
        RETURN;
    END IF;
    UPDATE sender_rate_budgets
       SET tat = first_slot + make_interval(secs => n / rate), grants = grants + 1, tokens = tokens + n,
           updated_at = t
     WHERE key = p_key;
    RETURN QUERY SELECT extract(epoch FROM t)::float8, ahead, n, 1.0 / rate, 0.0::float8;
END
$$;

-- A throttling response: cut the budget's rate for every instance, at most once a second. A lone
-- 429 (none in the last 10 s) cuts 5%, a repeated one 20%, never below 5% of the rate.
CREATE FUNCTION sender_rate_throttle(p_key text, p_recovery float8, p_quiet float8) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    b sender_rate_budgets%ROWTYPE;
    t timestamptz := clock_timestamp();
    current float8;
BEGIN
    SELECT * INTO b FROM sender_rate_budgets WHERE key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 1.0;
    END IF;
    current := sender_rate_factor(b.factor, b.cut_at, t, p_recovery, p_quiet);
    IF b.cut_at IS NOT NULL AND t - b.cut_at < interval '1 second' THEN
        RETURN current;
    END IF;
    current := greatest(0.05, current * CASE WHEN t - b.cut_at < interval '10 seconds' THEN 0.8 ELSE 0.95 END);
    UPDATE sender_rate_budgets SET factor = current, cut_at = t, updated_at = t WHERE key = p_key;
    RETURN current;
END
$$;

-- A campaign with its own rate_per_sec is sent by one instance at a time, which enforces the
-- rate exactly at the wire; the lease runs out when its holder stops renewing it (sender.campaign_lease).
CREATE TABLE sender_campaign_leases (
    campaign_id  bigint PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    instance_id  text NOT NULL,
    held_until   timestamptz NOT NULL
);

-- What each instance reports with its heartbeat: its send rate and the campaigns it is sending.
ALTER TABLE sender_instances
    ADD COLUMN send_rate float8 NOT NULL DEFAULT 0,
    ADD COLUMN campaigns bigint[] NOT NULL DEFAULT '{}';
