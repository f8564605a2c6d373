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
-- Redis's one thread runs this for every task: the strings a state needs are made once per
-- call, not once per task, and the per-task work is table lookups.
local STAMP, APPLIED, DUPLICATE, STALE = {}, {}, {}, {}
for state in pairs(RANK) do
  local letter = string.sub(state, 1, 1)
  STAMP[state] = string.lower(state) .. '_at_ms'
  APPLIED[state], DUPLICATE[state], STALE[state] = 'A' .. letter, 'D' .. letter, 'S' .. letter
end
local call = redis.call

local ttl_s = tonumber(ARGV[1])
if not ttl_s or ttl_s < 1 then
  return redis.error_reply('ERR ledger: ttl_s must be >= 1, got ' .. tostring(ARGV[1]))
end
-- Redis 7.0 turns a number argument into text with "%.17g", thousands of instructions a
-- call; an integer's digits are the same text at a fraction of the cost.
local ttl = ttl_s
if ttl_s % 1 == 0 and ttl_s < 1e15 then
  ttl = string.format('%d', ttl_s)
end

-- Pass 1: validate every argument and every stored state; remember each transition's group
-- and each key's stored state (pass 2 reads it here, not from Redis again, and keeps it
-- current).
local group_of = {}
local stored_of = {}
local nkeys = #KEYS
local a = 2
local i = 1
while i <= nkeys do
  local state, at_ms = ARGV[a], tonumber(ARGV[a + 1])
  local k, n = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local rank = RANK[state]
  if not rank then
    return redis.error_reply('ERR ledger: unknown state ' .. tostring(state) .. ' for ' .. KEYS[i])
  end
  if not at_ms or not k or not n or k < 1 or i + k - 1 > nkeys then
    return redis.error_reply('ERR ledger: malformed arguments for ' .. KEYS[i])
  end
  -- `after`: the nodes (below) this group leads to, by the node it starts from.
  local group = { state = state, at_ms = ARGV[a + 1], rank = rank, first = a + 4,
                  last = a + 3 + 2 * n, after = {} }
  for j = i, i + k - 1 do
    local key = KEYS[j]
    if stored_of[key] == nil then
      local stored = call('HGET', key, 'state')
      if stored and not RANK[stored] then
        return redis.error_reply('ERR ledger: stored state ' .. stored .. ' unknown in ' .. key)
      end
      stored_of[key] = stored or false
    end
    group_of[j] = group
  end
  i = i + k
  a = a + 4 + 2 * n
end
if a - 1 ~= #ARGV then
  return redis.error_reply('ERR ledger: expected ' .. (a - 1) .. ' arguments, got ' .. #ARGV)
end

-- The fields of a key's applied transitions gather and go in one HSET and one EXPIRE per
-- key at the end (a fused worker's task passes three states in one call). What gathers
-- depends only on the groups applied since the key's last write and on whether the task
-- was known, and a frame's tasks all take the same path: so each key points at a node of
-- a tree of such paths, and a node's fields are worked out once, by its first key written.
-- They hold each field once, where its first pair put it, with the last value (what
-- separate HSETs in order would leave): Redis's small hashes find a field by a linear scan.
local UNKNOWN, KNOWN = {}, {}
local function put(args, index, count, name, value)
  local p = index[name]
  if p then
    args[p] = value
    return count
  end
  args[count + 1] = name
  args[count + 2] = value
  index[name] = count + 2
  return count + 2
end
local function fields_of(leaf)
  local path, depth = {}, 0
  local root = leaf
  while root.group do
    depth = depth + 1
    path[depth] = root.group
    root = root.parent
  end
  local args, index, count = {}, {}, 0
  for d = depth, 1, -1 do
    local group = path[d]
    local state, at_ms = group.state, group.at_ms
    count = put(args, index, count, 'state', state)
    count = put(args, index, count, STAMP[state], at_ms)
    count = put(args, index, count, 'updated_at_ms', at_ms)
    if d == depth and root == UNKNOWN then
      count = put(args, index, count, 'attempts', '0')
      if state ~= 'ACCEPTED' then
        count = put(args, index, count, 'accepted_at_ms', at_ms)
      end
    end
    for p = group.first, group.last, 2 do
      count = put(args, index, count, ARGV[p], ARGV[p + 1])
    end
  end
  leaf.args = args
  return args
end

-- Pass 2: apply.
local out = {}
local order = {}
local pending = {}
local function flush(key)
  local node = pending[key]
  if node then
    call('HSET', key, unpack(node.args or fields_of(node)))
    call('EXPIRE', key, ttl)
    pending[key] = nil
  end
end
for j = 1, nkeys do
  local key, group = KEYS[j], group_of[j]
  local stored = stored_of[key]
  local state = group.state
  if group.rank > (stored and RANK[stored] or 0) then
    local parent = pending[key]
    if not parent then
      parent = stored and KNOWN or UNKNOWN
      order[#order + 1] = key
    end
    local node = group.after[parent]
    if not node then
      node = { parent = parent, group = group }
      group.after[parent] = node
    end
    pending[key] = node
    stored_of[key] = state
    out[j] = APPLIED[state]
  elseif state == stored then
    flush(key)  -- the count goes on top of what this call wrote
    call('HINCRBY', key, 'attempts', 1)
    out[j] = DUPLICATE[state]
  else
    out[j] = STALE[stored]
  end
end
for _, key in ipairs(order) do
  flush(key)
end
return table.concat(out)
