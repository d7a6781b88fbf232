-- Orthanc: forward every SEG a reader stores (OHIF over STOW-RS, 3D Slicer, any editor)
-- to lge-node, which measures a correction of its own segmentation again and sends back
-- reader-edited results (README, "Readers' corrections").
--
-- Install: add this file to "LuaScripts" in orthanc.json and declare the node in
-- "DicomModalities" under the name below. The node's own objects (Manufacturer
-- "lge-node") are not sent back to it; a SEG the node did not analyse the images of is
-- stored there and skipped with its reason.

local LGE_NODE = 'lge'  -- the node's name in DicomModalities

function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags['Modality'] == 'SEG' and tags['Manufacturer'] ~= 'lge-node' then
    SendToModality(instanceId, LGE_NODE)
  end
end
