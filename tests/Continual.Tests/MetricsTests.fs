module Continual.Tests.MetricsTests

open Expecto
open Continual

let private r =
    [| [| 90.0; 10.0; 0.0 |]
       [| 60.0; 80.0; 5.0 |]
       [| 50.0; 70.0; 95.0 |] |]

[<Tests>]
let tests =
    testList "metrics" [
        test "average accuracy is the mean of the last row" {
            Expect.floatClose Accuracy.veryHigh (Metrics.averageAccuracy r) ((50.0 + 70.0 + 95.0) / 3.0) "A"
        }
        test "forgetting against a hand-computed matrix" {
            // task 1: best 90 before the end, 50 at the end -> 40; task 2: best 80, 70 at the end -> 10
            Expect.equal (Metrics.forgetting r) (Some 25.0) "F"
        }
        test "backward transfer against a hand-computed matrix" {
            // task 1: 50 - 90; task 2: 70 - 80
            Expect.equal (Metrics.backwardTransfer r) (Some -25.0) "BWT"
        }
        test "forward transfer against a hand-computed matrix" {
            // task 2: 10 - 8; task 3: 5 - 2 (the baseline's first figure is not used)
            Expect.equal (Metrics.forwardTransfer r [| 99.0; 8.0; 2.0 |]) (Some 2.5) "FWT"
            Expect.equal (Metrics.forwardTransfer [| [| 80.0; 90.0 |] |] [| 10.0; 10.0 |]) None "FWT undefined for JOINT"
            Expect.throwsT<System.ArgumentException> (fun () -> Metrics.forwardTransfer r [| 10.0; 10.0 |] |> ignore) "one baseline figure per task"
        }
        test "a single row (JOINT) has no forgetting or backward transfer" {
            Expect.equal (Metrics.forgetting [| [| 80.0; 90.0 |] |]) None "F undefined"
            Expect.equal (Metrics.backwardTransfer [| [| 80.0; 90.0 |] |]) None "BWT undefined"
            Expect.equal (Metrics.averageAccuracy [| [| 80.0; 90.0 |] |]) 85.0 "A"
        }
        test "mean and sample spread" {
            let m, s = Metrics.meanAndSpread [ 1.0; 2.0; 3.0 ]
            Expect.equal m 2.0 "mean"
            Expect.floatClose Accuracy.veryHigh s 1.0 "sample standard deviation"
        }
        test "paired difference: mean of per-seed differences and its standard error" {
            // differences 2, 4, 9: mean 5, sample s.d. sqrt(13), standard error sqrt(13 / 3)
            let m, se = Metrics.pairedDifference [ 92.0; 95.0; 99.0 ] [ 90.0; 91.0; 90.0 ]
            Expect.floatClose Accuracy.veryHigh m 5.0 "mean difference"
            Expect.floatClose Accuracy.veryHigh se (sqrt (13.0 / 3.0)) "standard error"
            Expect.throwsT<System.ArgumentException> (fun () -> Metrics.pairedDifference [ 1.0 ] [ 1.0; 2.0 ] |> ignore) "different seed counts"
        }
    ]
