/// Shared FsCheck settings: a fixed replay seed in CI so every run checks the same cases.
module Continual.Properties.PropertyConfig

open Expecto

/// The FsCheck configuration of every property: fixed seed (CI is reproducible), bounded sizes.
let fixedSeed maxTest =
    { FsCheckConfig.defaultConfig with
        maxTest = maxTest
        replay = Some(20261129UL, 97UL, None)
        endSize = 100 }

/// Named tolerances for float32 comparisons.
module Tolerance =
    /// For sums of a few hundred float32 terms.
    let float32Sum = 1e-5
