// Shared by every shader: workgroup indexing past the 65535-per-dimension dispatch limit.
//
// A dispatch of G workgroups is laid out as (min(G, 65535), ceil(G / 65535), z); this gives the
// flat index of the current workgroup in 0..G (callers check it against G).
uint flat_workgroup() {
    return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
}
