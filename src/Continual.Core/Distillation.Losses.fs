namespace Continual

open TorchSharp

/// The distillation losses of METHODS.md as pure functions of (old model outputs, new outputs, batch).
/// Teacher tensors are the old model snapshot's outputs and are never differentiated through; student
/// tensors carry the gradient. Feature maps are [n, C, H, W]; a rank-2 feature [n, D] (an MLP layer)
/// is read as one map with a single channel of D positions for the map-based losses (NST, AT) and as
/// D channels of one position for PODNet. Every function returns a scalar tensor that belongs to the
/// caller's dispose scope.
[<RequireQualifiedAccess>]
module Distillation =

    let private scalar (v: float) : Scalar = Scalars.cached v

    let private mapAsChannels (features: Tensor) : Tensor =
        match features.dim () with
        | 2L -> features.unsqueeze 1L
        | 4L -> features.flatten 2L
        | d -> invalidArg (nameof features) (sprintf "a feature map is [n, D] or [n, C, H, W] (got rank %d)" d)

    let private l2NormaliseRows (x: Tensor) : Tensor = torch.nn.functional.normalize(x, 2.0, -1L)

    // `norm` rather than `torch.linalg.vector_norm`, whose TorchSharp binding passes a temporary Scalar
    // that a collection may free mid-call; libtorch's `norm` is `linalg_vector_norm` (same result, same
    // gradient) and takes p as a plain float.
    let private rowNorms (x: Tensor) : Tensor = x.norm(-1, false, 2.0f)

    /// `p(z, T)_i = exp(z_i / T) / Σ_j exp(z_j / T)` over the last dimension.
    let softmaxWithTemperature (temperature: float) (logits: Tensor) : Tensor =
        if not (temperature > 0.0) then invalidArg (nameof temperature) "the temperature must be positive"
        torch.nn.functional.softmax(logits.div(scalar temperature), -1L)

    /// Hinton's KD: `T² · KL(p(teacher, T) || p(student, T))` per row, averaged over the batch.
    /// Non-negative, zero for equal logits, invariant to adding a constant to either row of logits.
    let kd (temperature: float) (teacherLogits: Tensor) (studentLogits: Tensor) : Tensor =
        if not (temperature > 0.0) then invalidArg (nameof temperature) "the temperature must be positive"
        let logTeacher = torch.nn.functional.log_softmax(teacherLogits.div(scalar temperature), -1L)
        let logStudent = torch.nn.functional.log_softmax(studentLogits.div(scalar temperature), -1L)
        let perRow = logTeacher.exp().mul(logTeacher.sub(logStudent)).sum(-1L)
        perRow.mean().mul(scalar (temperature * temperature))

    /// The soft-target cross-entropy of LwF: `−mean_rows Σ_c q_teacher,c · log q_student,c` with
    /// `q = softmax(z)^(1/T)` re-normalised, which equals `softmax(z / T)`. Unlike `kd` it keeps the
    /// teacher's entropy and has no T² factor (the convention behind the reference numbers).
    let softTargetCrossEntropy (temperature: float) (teacherLogits: Tensor) (studentLogits: Tensor) : Tensor =
        let target = softmaxWithTemperature temperature teacherLogits
        let logStudent = torch.nn.functional.log_softmax(studentLogits.div(scalar temperature), -1L)
        target.mul(logStudent).sum(-1L).mean().neg()

    /// FitNets: `½ ||u_teacher(x) − r(v_student(x))||²` per sample, averaged over the batch, given the
    /// teacher's hint features and the regressor's image of the student's guided features (same shape).
    let fitNets (teacherHint: Tensor) (regressedStudent: Tensor) : Tensor =
        teacherHint.sub(regressedStudent).pow(scalar 2.0).flatten(1L).sum(1L).mean().mul(scalar 0.5)

    /// A FitNets regressor from student features to teacher features: a linear layer for [n, D]
    /// features, a 1×1 convolution for [n, C, H, W] maps. Initialised to the identity when the widths
    /// agree (old and new model share an architecture), so the loss starts as plain feature matching.
    let fitNetsRegressor (studentChannels: int) (teacherChannels: int) (convolutional: bool) : torch.nn.Module<Tensor, Tensor> =
        let identity (w: Tensor) =
            use _ = torch.no_grad ()
            if studentChannels = teacherChannels then
                use eye = torch.eye(int64 teacherChannels)
                w.copy_(if convolutional then eye.reshape(int64 teacherChannels, int64 studentChannels, 1L, 1L) else eye) |> ignore
        if convolutional then
            let conv = torch.nn.Conv2d(int64 studentChannels, int64 teacherChannels, 1L)
            identity conv.weight
            torch.nn.init.zeros_ conv.bias |> ignore
            conv :> torch.nn.Module<Tensor, Tensor>
        else
            let linear = torch.nn.Linear(int64 studentChannels, int64 teacherChannels)
            identity linear.weight
            torch.nn.init.zeros_ linear.bias |> ignore
            linear :> torch.nn.Module<Tensor, Tensor>

    /// NST: each channel's map, flattened over space and L2-normalised, is a sample; the loss is the
    /// squared MMD between the teacher's and the student's samples with the polynomial kernel
    /// `k(a, b) = (aᵀb + c)^d`, per example, averaged over the batch. Channel counts may differ,
    /// spatial sizes must agree. Non-negative for c ≥ 0 and zero for equal maps.
    let nst (degree: int) (c: float) (teacherMap: Tensor) (studentMap: Tensor) : Tensor =
        let t = l2NormaliseRows (mapAsChannels teacherMap)
        let s = l2NormaliseRows (mapAsChannels studentMap)
        let kernel (a: Tensor) (b: Tensor) = a.bmm(b.transpose(1L, 2L)).add(scalar c, Scalars.one).pow(scalar (float degree)).mean([| 1L; 2L |])
        (Scalars.add (kernel s s) (kernel t t)).sub((kernel s t).mul(scalar 2.0)).mean()

    /// AT's attention map `Q = vec(Σ_c |A_c|^p)` of a feature map, [n, positions].
    let attentionMap (p: float) (featureMap: Tensor) : Tensor =
        (mapAsChannels featureMap).abs().pow(scalar p).sum(1L)

    /// Attention transfer over pairs (teacher map, student map) of layers:
    /// `Σ_layers || Q_s/||Q_s||₂ − Q_t/||Q_t||₂ ||₂`, averaged over the batch.
    /// Invariant to a positive rescaling of either feature map.
    let attentionTransfer (p: float) (layers: (Tensor * Tensor) list) : Tensor =
        match layers with
        | [] -> invalidArg (nameof layers) "attention transfer needs at least one layer"
        | _ ->
            layers
            |> List.map (fun (teacher, student) ->
                let qt = l2NormaliseRows (attentionMap p teacher)
                let qs = l2NormaliseRows (attentionMap p student)
                (rowNorms (qs.sub qt)).mean())
            |> List.reduce Scalars.add

    let private offDiagonal (n: int64) (device: Device) : Tensor =
        torch.ones([| n; n |], device = device).sub(torch.eye(n, device = device))

    /// RKD's distance relations `ψ_D(t_i, t_j) = ||t_i − t_j||₂ / μ`, μ the mean distance over pairs
    /// i ≠ j of the batch, as an [n, n] matrix with a zero diagonal. Needs n ≥ 2.
    let rkdDistanceRelations (embeddings: Tensor) : Tensor =
        let n = embeddings.shape.[0]
        if n < 2L then invalidArg (nameof embeddings) "distance relations need at least two samples"
        let squared = embeddings.unsqueeze(0L).sub(embeddings.unsqueeze 1L).pow(scalar 2.0).sum(2L)
        // The clamp keeps the gradient finite on the diagonal, which the mask then zeroes.
        let distances = squared.clamp_min(scalar 1e-12).sqrt().mul(offDiagonal n embeddings.device)
        let mu = distances.sum().div(scalar (float (n * (n - 1L)))).clamp_min(scalar 1e-12)
        distances.div mu

    /// RKD's angle relations `ψ_A(t_i, t_j, t_k) = ⟨e_ij, e_kj⟩`, `e_ij = (t_i − t_j)/||t_i − t_j||₂`,
    /// as an [n, n, n] tensor indexed [j, i, k]; entries with i = j or k = j are zero.
    let rkdAngleRelations (embeddings: Tensor) : Tensor =
        let n = embeddings.shape.[0]
        let differences = embeddings.unsqueeze(0L).sub(embeddings.unsqueeze 1L) // [j, i] = t_i − t_j
        // Masking after normalising keeps the huge derivative of x / eps at x = 0 out of the gradient.
        let units = l2NormaliseRows(differences).mul((offDiagonal n embeddings.device).unsqueeze 2L)
        units.bmm(units.transpose(1L, 2L))

    /// RKD distance loss: Huber (smooth L1, β = 1) between the student's and the teacher's distance
    /// relations, averaged over all n² entries.
    let rkdDistance (teacherEmbeddings: Tensor) (studentEmbeddings: Tensor) : Tensor =
        torch.nn.functional.smooth_l1_loss(rkdDistanceRelations studentEmbeddings, rkdDistanceRelations teacherEmbeddings)

    /// RKD angle loss: Huber (smooth L1, β = 1) between the student's and the teacher's angle
    /// relations, averaged over all n³ entries.
    let rkdAngle (teacherEmbeddings: Tensor) (studentEmbeddings: Tensor) : Tensor =
        torch.nn.functional.smooth_l1_loss(rkdAngleRelations studentEmbeddings, rkdAngleRelations teacherEmbeddings)

    /// PODNet's spatial pooling of one stage: the sums over W (POD-width, [n, C, H]) and over H
    /// (POD-height, [n, C, W]) flattened, concatenated and L2-normalised per example. A rank-2
    /// feature [n, D] is read as D channels of a 1×1 map.
    let podSpatialPooling (featureMap: Tensor) : Tensor =
        let map =
            match featureMap.dim () with
            | 2L -> featureMap.unsqueeze(2L).unsqueeze 3L
            | 4L -> featureMap
            | d -> invalidArg (nameof featureMap) (sprintf "a feature map is [n, D] or [n, C, H, W] (got rank %d)" d)
        let width = map.sum(3L).flatten 1L
        let height = map.sum(2L).flatten 1L
        l2NormaliseRows (torch.cat([| width; height |], 1L))

    /// POD-spatial: `Σ_stages mean_batch || pool(old) − pool(new) ||₂` over pairs (old, new) of stages.
    let podSpatial (stages: (Tensor * Tensor) list) : Tensor =
        match stages with
        | [] -> invalidArg (nameof stages) "POD-spatial needs at least one stage"
        | _ ->
            stages
            |> List.map (fun (teacher, student) -> (rowNorms ((podSpatialPooling student).sub(podSpatialPooling teacher))).mean())
            |> List.reduce Scalars.add

    /// POD-flat: the L2 distance between the L2-normalised old and new embeddings, averaged over the batch.
    let podFlat (teacherEmbeddings: Tensor) (studentEmbeddings: Tensor) : Tensor =
        (rowNorms ((l2NormaliseRows studentEmbeddings).sub(l2NormaliseRows teacherEmbeddings))).mean()

    /// An orthonormal basis [D, m] of the span of the top-m left singular vectors of the features of
    /// one class laid out as columns (D × k); `features` is [k, D] and m ≤ min(k, D).
    let subspaceBasis (m: int) (features: Tensor) : Tensor =
        let k, d = features.shape.[0], features.shape.[1]
        if m < 1 || int64 m > min k d then invalidArg (nameof m) (sprintf "the subspace dimension must be in 1..%d (got %d)" (min k d) m)
        let struct (_, _, vh) = torch.linalg.svd(features, false)
        vh.narrow(0L, 0L, int64 m).t()

    /// The squared projection distance between two subspaces given by orthonormal bases [D, m]:
    /// `2m − 2 ||Aᵀ B||_F²`, within [0, 2m], zero for equal subspaces, symmetric, and invariant to an
    /// orthogonal change of basis inside either subspace.
    let projectionDistance (basisA: Tensor) (basisB: Tensor) : Tensor =
        let m = float basisA.shape.[1]
        basisA.t().matmul(basisB).pow(scalar 2.0).sum().mul(scalar -2.0).add(scalar (2.0 * m), Scalars.one)

    /// One class's SD term `2m − 2 ||P_sᵀ P_t||_F²` with an exact gradient that stays finite. The
    /// top-m subspace of the student features F depends on F only through G = FᵀF; its first-order
    /// change is `dΠ = Σ_{i≤m<a} (v_a v_aᵀ dG v_i v_iᵀ + v_i v_iᵀ dG v_a v_aᵀ) / (λ_i − λ_a)` over G's
    /// eigenpairs, the null space of G included (λ_a = 0). The loss's gradient in G is therefore a
    /// matrix W built from one reduced SVD of F, and `value + ⟨G, W⟩ − ⟨G, W⟩.detach()` has the loss's
    /// value and gradient 2FW. Differentiating through an SVD instead divides 0 by 0 whenever
    /// singular values repeat (a rank-deficient class, as ReLU embeddings often are), which turns a
    /// whole run's weights into NaN. When the subspace is ill-defined (λ_m or the gap λ_m − λ_{m+1}
    /// below 1e-4 of λ_1) the term keeps its value and its gradient is zero.
    let private subspaceTerm (m: int) (teacher: Tensor) (student: Tensor) : Tensor option =
        let k, d = student.shape.[0], student.shape.[1]
        let m = min (int64 m) (min k d)
        let value, surrogate =
            use _ = torch.no_grad ()
            let struct (_, st, vht) = torch.linalg.svd(teacher.detach(), false)
            let struct (_, ss, vhs) = torch.linalg.svd(student.detach(), false)
            let hostValues (t: Tensor) = t.cpu().to_type(torch.ScalarType.Float64).data<float>().ToArray()
            let lt, ls = hostValues st |> Array.map (fun s -> s * s), hostValues ss |> Array.map (fun s -> s * s)
            if lt.Length = 0 || ls.Length = 0 || lt.[0] <= 1e-24 || ls.[0] <= 1e-24 then None, None
            else
                let basisT = vht.narrow(0L, 0L, m).t() // [D, m]
                let v1 = vhs.narrow(0L, 0L, m).t() // [D, m]
                let value = projectionDistance v1 basisT
                let m' = int m
                let wellDefined = ls.[m' - 1] > 1e-4 * ls.[0] && (m' >= ls.Length || ls.[m' - 1] - ls.[m'] > 1e-4 * ls.[0])
                if not (student.requires_grad && wellDefined) then Some value, None
                else
                    let projector = basisT.matmul(basisT.t()) // Π_t, [D, D]
                    let l1 = ss.narrow(0L, 0L, m).pow(scalar 2.0) // [m]
                    let pv1 = projector.matmul v1 // Π_t V1, [D, m]
                    // The null space of G: N Π_t V1 with N = I − V Vᵀ over all of F's right singular vectors.
                    let vAll = vhs.t()
                    let nullPart = pv1.sub(vAll.matmul(vAll.t().matmul pv1)).div(l1.unsqueeze 0L) // [D, m]
                    let half =
                        if m < ls.LongLength then
                            let v2 = vhs.narrow(0L, m, ls.LongLength - m).t() // [D, r − m]
                            let l2 = ss.narrow(0L, m, ls.LongLength - m).pow(scalar 2.0)
                            let c = v2.t().matmul pv1 // [r − m, m]
                            let gaps = l1.unsqueeze(0L).sub(l2.unsqueeze 1L) // λ_i − λ_a
                            Scalars.add (v2.matmul(c.div gaps)) nullPart // [D, m]
                        else nullPart
                    // W = −2 (H V1ᵀ + V1 Hᵀ) with H the [D, m] factor above.
                    let w = (Scalars.add (half.matmul(v1.t())) (v1.matmul(half.t()))).mul(scalar -2.0)
                    Some value, Some w
        match value, surrogate with
        | None, _ -> None
        | Some v, None when student.requires_grad -> Some(Scalars.add v (student.sum().mul(scalar 0.0))) // a zero gradient
        | Some v, None -> Some v
        | Some v, Some w ->
            let inner = student.matmul(w).mul(student).sum()
            Some((Scalars.add v inner).sub(inner.detach()))

    /// Subspace distillation: for each class k present among `labels`, the top-m subspaces of the old
    /// and the new features of its samples (m capped at the class's sample count), and
    /// `(1/|C|) Σ_k (2m − 2 ||P_kᵗᵀ P_kᵗ⁻¹||_F²)`. Classes whose features are all zero (no subspace)
    /// are left out; zero (with a zero gradient) when no class is left. The gradient is exact and finite (see the per-class
    /// term); only the student's features are differentiated.
    let subspaceDistillation (m: int) (labels: int[]) (teacherFeatures: Tensor) (studentFeatures: Tensor) : Tensor =
        if m < 1 then invalidArg (nameof m) "the subspace dimension must be positive"
        let terms =
            labels
            |> Array.indexed
            |> Array.groupBy snd
            |> Array.sortBy fst
            |> Array.choose (fun (_, rows) ->
                let index = torch.tensor(rows |> Array.map (fst >> int64), dtype = torch.ScalarType.Int64, device = studentFeatures.device)
                subspaceTerm m (teacherFeatures.index_select(0L, index)) (studentFeatures.index_select(0L, index)))
        if terms.Length = 0 then studentFeatures.sum().mul(scalar 0.0)
        else (terms |> Array.reduce Scalars.add).div(scalar (float terms.Length))

    /// The exemplar relation graph's loss on buffer exemplars' embeddings: the angle relations
    /// `A(p, q, z) = ⟨e_pq, e_zq⟩` of the old and the new embeddings compared with the p-norm taken as
    /// a mean, `(mean |A_old − A_new|^p)^(1/p)` (p ≥ 1), so the value does not grow with the buffer.
    let relationGraph (p: float) (teacherEmbeddings: Tensor) (studentEmbeddings: Tensor) : Tensor =
        if not (p >= 1.0) then invalidArg (nameof p) "p must be at least 1"
        let difference = (rkdAngleRelations studentEmbeddings).sub(rkdAngleRelations teacherEmbeddings).abs()
        if p = 1.0 then difference.mean()
        else difference.pow(scalar p).mean().clamp_min(scalar 1e-24).pow(scalar (1.0 / p))
