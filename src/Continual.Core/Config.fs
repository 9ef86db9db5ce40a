namespace Continual

open System
open System.Globalization
open System.Text.Json
open Continual.Methods
open Continual.Penalties

/// How the user's own data is read (image folders, Tiny ImageNet, tables, manifests); the built-in
/// IDX and CIFAR-10 benchmarks ignore it.
type SourceSettings =
    { /// Height and width images are brought to (None: the files' own size; Tiny ImageNet: 64 x 64).
      ImageSize: (int * int) option
      /// auto (as the files are), gray or rgb.
      Colour: string
      /// Classes per task of image folders and tables (None: 2; Tiny ImageNet always takes 20).
      ClassesPerTask: int option
      /// The label column of CSV files.
      LabelColumn: string
      /// Every feature of a table is divided by this (e.g. 255 for pixel values).
      FeatureScale: float option
      /// Per-channel normalisation of images when a batch is made: "none", "train" (each channel's mean
      /// and standard deviation over the training set, applied to train and test alike) or the values
      /// as "MEAN,MEAN,.../STD,STD,..." (one of each per channel, on the [0, 1] scale).
      Normalise: string }
    /// The files' own size and colour, tasks of 2 classes, the column "label", values as written, no
    /// normalisation.
    static member Default =
        { ImageSize = None; Colour = "auto"; ClassesPerTask = None; LabelColumn = "label"; FeatureScale = None; Normalise = "none" }

/// Which data a run learns.
type DataSettings =
    { /// split-fmnist, split-mnist, split-cifar10, split-tinyimagenet, folder, csv, npy or manifest.
      Benchmark: string
      /// The folder holding the benchmark's files (the manifest file for manifest).
      Folder: string
      /// Use at most this many training examples per class (None: all).
      TrainPerClass: int option
      /// Use at most this many test examples per class (None: all).
      TestPerClass: int option
      /// Accept a training set in which some class has no example (by default such data is refused).
      AllowMissingClasses: bool
      /// How image folders, Tiny ImageNet, tables and manifests are read.
      Source: SourceSettings }

/// How the classifier head is sized.
[<RequireQualifiedAccess>]
type HeadKind =
    /// One output per class of the benchmark from the start (the reference protocol; the default).
    | Fixed
    /// One output per class seen: the head starts with the first task's classes and grows before every
    /// task that brings classes beyond its width (docs/growing-head.md).
    | Growing

/// How many output heads a model has.
[<RequireQualifiedAccess>]
type HeadCount =
    /// One head over every class (the default): Class-IL and Task-IL.
    | Single
    /// One head per task, each over its own classes (LwF's original form, for Task-IL): each training
    /// row's softmax covers its own task's head (docs/baselines.md).
    | Multi

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
      Head: HeadKind
      /// One head (the default) or one head per task.
      Heads: HeadCount }

