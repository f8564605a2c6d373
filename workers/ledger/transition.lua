-- Applies a batch of task state transitions atomically and monotonically.
--
-- Transitions come in groups that share everything but the task (a frame's tasks reaching
-- one state at one time with the same fields), so a call carries each shared value once.
-- KEYS[i]  the task hash of transition i (the same key may appear more than once;
--          transitions are applied in order, each seeing the ones before it).
-- ARGV[1]  ttl_s, set on every key a transition is applied to.
-- Then, per group, in KEYS order:
--   state, at_ms, k (tasks in the group: the next k KEYS), n, followed by n field/value pairs
--   written only when a transition applies.
--
-- Rank: ACCEPTED 1 < PREPROCESSED 2 < INFERRED 3 < terminal (DONE, FAILED, EXPIRED, REJECTED) 4.
--   new rank > stored rank      -> APPLIED: state, <state>_at_ms, updated_at_ms, the pairs,
--                                  EXPIRE; an unknown task also gets attempts=0 and
--                                  accepted_at_ms (a jump from nothing records acceptance).
--   new state == stored state   -> DUPLICATE: attempts += 1, nothing else changes.
--   otherwise (lower rank, or another terminal state) -> STALE: nothing changes.
-- Returns one string of two letters per transition: its outcome (A APPLIED, D DUPLICATE,
-- S STALE) and the first letter of the state stored after it (all seven differ). One bulk
-- reply, not an array of 2n: the client parses a frame of a thousand tasks in one read.
--
-- Everything is validated before the first write, so a bad call changes nothing.

local RANK = {
  ACCEPTED = 1, PREPROCESSED = 2, INFERRED = 3,
  DONE = 4, FAILED = 4, EXPIRED = 4, REJECTED = 4,
}

local ttl_s = tonumber(ARGV[1])
if not ttl_s or ttl_s < 1 then
  return redis.error_reply('ERR ledger: ttl_s must be >= 1, got ' .. tostring(ARGV[1]))
end

-- Pass 1: validate every argument and every stored state; remember each key's group start
-- and its stored state (pass 2 reads it here, not from Redis again, and keeps it current).
local starts = {}
local stored_of = {}
local a = 2
local i = 1
while i <= #KEYS do
  local state, at_ms = ARGV[a], tonumber(ARGV[a + 1])
  local k, n = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if not RANK[state] then
    return redis.error_reply('ERR ledger: unknown state ' .. tostring(state) .. ' for ' .. KEYS[i])
  end
  if not at_ms or not k or not n or k < 1 or i + k - 1 > #KEYS then
    return redis.error_reply('ERR ledger: malformed arguments for ' .. KEYS[i])
  end
  for j = i, i + k - 1 do
    local key = KEYS[j]
    if stored_of[key] == nil then
      local stored = redis.call('HGET', key, 'state')
      if stored and not RANK[stored] then
        return redis.error_reply('ERR ledger: stored state ' .. stored .. ' unknown in ' .. key)
      end
      stored_of[key] = stored or false
    end
    starts[j] = a
  end
  i = i + k
  a = a + 4 + 2 * n
end
if a - 1 ~= #ARGV then
  return redis.error_reply('ERR ledger: expected ' .. (a - 1) .. ' arguments, got ' .. #ARGV)
end

-- Pass 2: apply. The fields of a key's applied transitions gather and go in one HSET and
-- one EXPIRE per key at the end (a fused worker's task passes three states in one call);
-- later pairs override earlier ones, as separate HSETs in order would.
local out = {}
local order = {}
local pending = {}
local function flush(key)
  local fields = pending[key]
  if fields then
    redis.call('HSET', key, unpack(fields))
    redis.call('EXPIRE', key, ttl_s)
    pending[key] = nil
  end
end
for i, key in ipairs(KEYS) do
  local s = starts[i]
  local state, at_ms, n = ARGV[s], ARGV[s + 1], tonumber(ARGV[s + 3])
  local stored = stored_of[key]
  local stored_rank = stored and RANK[stored] or 0
  if RANK[state] > stored_rank then
    local fields = pending[key]
    if not fields then
      fields = {}
      pending[key] = fields
      order[#order + 1] = key
    end
    local function add(name, value)
      fields[#fields + 1] = name
      fields[#fields + 1] = value
    end
    add('state', state)
    add(string.lower(state) .. '_at_ms', at_ms)
    add('updated_at_ms', at_ms)
    if not stored then
      add('attempts', '0')
      if state ~= 'ACCEPTED' then
        add('accepted_at_ms', at_ms)
      end
    end
    for p = s + 4, s + 3 + 2 * n, 2 do
      add(ARGV[p], ARGV[p + 1])
    end
    stored_of[key] = state
    out[#out + 1] = 'A' .. string.sub(state, 1, 1)
  elseif state == stored then
    flush(key)  -- the count goes on top of what this call wrote
    redis.call('HINCRBY', key, 'attempts', 1)
    out[#out + 1] = 'D' .. string.sub(stored, 1, 1)
  else
    out[#out + 1] = 'S' .. string.sub(stored, 1, 1)
  end
end
for _, key in ipairs(order) do
  flush(key)
end
return table.concat(out)
