-- sender_campaign_share answered a shrink with the fair share alone, unchecked against what the
-- other instances still hold. Within the rate that cannot overshoot (the others' units and ours add
-- up to no more than it), but after rate_per_sec drops they may hold more than the new rate, and
-- instances that compute their fair share in different orders (the tie-break is on units held,
-- which the shrinks change) were each answered a share that together exceeded it (10 -> 3 under two
-- instances: 2 and 2). A shrink is now capped by what fits, like a grow: until the old units have
-- been given up and cooled, the instances get less (none, for about a window) rather than more.
CREATE OR REPLACE FUNCTION sender_campaign_share(p_campaign bigint, p_instance text, p_total int, p_enforcing int,
                                      p_used int, p_want int, p_hold float8, p_cool float8)
RETURNS TABLE (granted int, fair int)
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz;
    cool interval := make_interval(secs => p_cool);
    me sender_campaign_shares%ROWTYPE;
    busy int;
    free int;
    remaining int;
    wanting int;
    target int := 0;
    fair_share int := 0;
    share int;
    r record;
BEGIN
    -- one caller per campaign at a time: a new holder's row is not yet visible to a concurrent one
    PERFORM pg_advisory_xact_lock(hashtextextended('sender_campaign_share', p_campaign));
    t := clock_timestamp();
    DELETE FROM sender_campaign_shares
     WHERE campaign_id = p_campaign AND instance_id <> p_instance
       AND held_until + cool < t AND (cooling_until IS NULL OR cooling_until < t);

    SELECT * INTO me FROM sender_campaign_shares WHERE campaign_id = p_campaign AND instance_id = p_instance;
    IF NOT FOUND THEN
        INSERT INTO sender_campaign_shares (campaign_id, instance_id, held_until) VALUES (p_campaign, p_instance, t)
        RETURNING * INTO me;
    END IF;
    IF me.cooling_until IS NULL OR me.cooling_until < t THEN
        me.cooling := 0;
    END IF;
    IF p_enforcing < me.units THEN  -- we gave units up, or our hold ran out
        -- the ones we used in the last window cool from now; the others are free at once
        IF p_used > p_enforcing THEN
            me.cooling := me.cooling + least(me.units, p_used) - greatest(p_enforcing, 0);
            me.cooling_until := t + cool;
        END IF;
        me.units := greatest(p_enforcing, 0);
    END IF;

    SELECT coalesce(sum(CASE WHEN held_until + cool > t THEN units ELSE 0 END
                        + CASE WHEN cooling_until > t THEN cooling ELSE 0 END), 0)
      INTO busy
      FROM sender_campaign_shares WHERE campaign_id = p_campaign AND instance_id <> p_instance;
    free := p_total - busy - me.cooling - me.units;

    -- Fair shares among the live instances that want units: the smallest wants first, each taking
    -- at most an even split of what is left; ties go to the bigger holder (no churn), then by name.
    IF p_want > 0 THEN
        remaining := p_total;
        SELECT count(*) + 1 INTO wanting FROM sender_campaign_shares
         WHERE campaign_id = p_campaign AND instance_id <> p_instance AND held_until > t AND wanted > 0;
        FOR r IN SELECT instance_id, wanted FROM (
                     SELECT instance_id, wanted, units FROM sender_campaign_shares
                      WHERE campaign_id = p_campaign AND instance_id <> p_instance AND held_until > t AND wanted > 0
                     UNION ALL SELECT p_instance, p_want, me.units) w
                  ORDER BY wanted, units DESC, instance_id LOOP
            share := least(r.wanted, ceil(remaining::numeric / greatest(wanting, 1))::int);
            IF r.instance_id = p_instance THEN
                target := share;
                EXIT;
            END IF;
            remaining := remaining - share;
            wanting := wanting - 1;
        END LOOP;
    END IF;

    fair_share := target;
    IF target > me.units THEN  -- grow by what is free now
        me.units := me.units + least(target - me.units, greatest(free, 0));
        target := me.units;
    ELSE  -- a shrink: recorded once we say we enforce it (p_enforcing, next time); never more than fits
        -- beside what the others still hold (after the rate dropped, they may hold more than it has)
        target := greatest(least(target, me.units + free), 0);
    END IF;
    me.wanted := greatest(p_want, 0);
    me.held_until := t + make_interval(secs => p_hold);
    UPDATE sender_campaign_shares
       SET units = me.units, wanted = me.wanted, held_until = me.held_until, cooling = me.cooling,
           cooling_until = me.cooling_until
     WHERE campaign_id = p_campaign AND instance_id = p_instance;
    RETURN QUERY SELECT target, fair_share;
END
$$;
