namespace Continual

open System
open System.Globalization
open System.Text.Json
open Continual.Methods
open Continual.Penalties

/// Which data a run learns.
type DataSettings =
    { /// split-fmnist, split-mnist or split-cifar10.
      Benchmark: string
      /// The folder holding the benchmark's files.
      Folder: string
      /// Use at most this many training examples per class (None: all).
      TrainPerClass: int option
      /// Use at most this many test examples per class (None: all).
      TestPerClass: int option
      /// Accept a training set in which some class has no example (by default such data is refused).
      AllowMissingClasses: bool }

/// How the classifier head is sized.
[<RequireQualifiedAccess>]
type HeadKind =
    /// One output per class of the benchmark from the start (the reference protocol; the default).
    | Fixed
    /// One output per class seen: the head starts with the first task's classes and grows before every
    /// task that brings classes beyond its width (docs/growing-head.md).
    | Growing

/// Everything that defines a run, typed and nested: the run's settings, its data, the backbone, the
/// method, an optional importance penalty and optional distillation terms. `Config.version` numbers
/// its JSON form.
type Config =
    { Run: RunSettings
      Data: DataSettings
      /// mlp (the reference MLP), cnn or resnet18 (reduced, 20 base filters).
      Backbone: string
      Method: MethodConfig
      /// An importance penalty added to the method's loss (e.g. SI on DER++).
      Penalty: ImportanceConfig option
      /// Distillation terms against the old model snapshot, added in order.
      Distillation: DistillationSettings list
      /// Fixed (every class from the start) or growing (the classes seen so far).
      Head: HeadKind }

