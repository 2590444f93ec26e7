-- Argo CD health check for kompression.dev/CompressionJob.
-- Install it under resource.customizations.health.kompression.dev_CompressionJob in argocd-cm.
-- Succeeded is Healthy; Failed, or Stalled=True, is Degraded; Suspended is Suspended; anything
-- still in flight, or a status that has not yet observed the latest generation, is Progressing.
local hs = {}

local function condition(conditions, type)
  for _, c in ipairs(conditions or {}) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to accept the job"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end

if status.phase == "Failed" then
  local failed = condition(status.conditions, "Failed")
  hs.status = "Degraded"
  if failed ~= nil then
    hs.message = (failed.reason or "Failed") .. ": " .. (failed.message or "")
  else
    hs.message = "The job failed"
  end
  return hs
end

if status.phase == "Succeeded" then
  hs.status = "Healthy"
  local result = status.result
  if result ~= nil and result.compressionRatio ~= nil then
    hs.message = string.format("Succeeded: %.2fx smaller", result.compressionRatio)
  else
    hs.message = "Succeeded"
  end
  return hs
end

if status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "The job is suspended (spec.runPolicy.suspend)"
  return hs
end

hs.status = "Progressing"
local message = status.phase
if status.phase == "Queued" and status.queuePosition ~= nil then
  message = message .. " at position " .. tostring(status.queuePosition)
end
if status.currentStep ~= nil then
  message = message .. ", step " .. status.currentStep
end
if status.progress ~= nil and status.progress.percentage ~= nil then
  message = message .. " (" .. tostring(status.progress.percentage) .. "%)"
end
-- Why it is not further along, when Ready says more than the phase (Pending: Unschedulable, ...).
local ready = condition(status.conditions, "Ready")
if ready ~= nil and ready.reason ~= nil and ready.reason ~= status.phase then
  message = message .. ": " .. ready.reason
  if ready.message ~= nil and ready.message ~= "" then
    message = message .. ": " .. ready.message
  end
end
hs.message = message
return hs
