-- Argo CD health check for graft.dev/TransferJob. Reads the status the operator writes (conditions
-- are the source of truth; phase is only a printer column) and maps it onto Argo CD's health:
-- Succeeded -> Healthy, Failed -> Degraded, Suspended -> Suspended, Pending/Running -> Progressing.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind and c.status == "True" then
      return c
    end
  end
  return nil
end

-- The condition's message (else the status's), prefixed with the reason when asked; the reason alone
-- when there is no message.
local function describe(c, status, with_reason)
  local reason = (c and c.reason) or status.reason
  local message = (c and c.message) or status.message
  if message == nil or message == "" then
    return reason or ""
  end
  if with_reason and reason ~= nil and reason ~= "" then
    return reason .. ": " .. message
  end
  return message
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Graft operator to pick up the TransferJob"
  return hs
end

-- A status computed from an older spec says nothing about the current one.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Graft operator to observe generation " .. tostring(generation)
  return hs
end

local failed = condition(status, "Failed")
if failed ~= nil then
  hs.status = "Degraded"
  hs.message = describe(failed, status, true)
  return hs
end

local succeeded = condition(status, "Succeeded")
if succeeded ~= nil then
  hs.status = "Healthy"
  hs.message = describe(succeeded, status, false)
  return hs
end

local suspended = condition(status, "Suspended")
if suspended ~= nil then
  hs.status = "Suspended"
  hs.message = describe(suspended, status, false)
  return hs
end

hs.status = "Progressing"
local running = condition(status, "Running")
local text = describe(running or condition(status, "Reconciling"), status, false)
if running ~= nil and status.stage ~= nil and status.progress ~= nil then
  text = status.stage .. " (" .. status.progress .. " stages done): " .. text
end
if text == "" then
  text = status.phase or "Pending"
end
hs.message = text
return hs
