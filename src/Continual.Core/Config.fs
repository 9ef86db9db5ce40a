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
      Distillation: DistillationSettings list }

