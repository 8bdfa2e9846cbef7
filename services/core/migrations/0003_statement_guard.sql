-- Lets one autocommit statement undo itself: a CTE calls rt_refuse() when what it wrote is not what the
-- caller asked for (a submission whose request_id was used before), so the whole statement rolls back.
CREATE OR REPLACE FUNCTION rt_refuse(reason text) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'RT001', MESSAGE = reason;
END
$$;
