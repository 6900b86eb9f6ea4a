"""Correspondence between two images with dense features: the matching behind ``propagate match``, ``edit`` and the
SPair-71k and HPatches protocols (DIFT, Tang et al. 2023, sections 5.1, 5.2 and the edit-propagation application).

Conventions (every function here): an image is ``W x H`` native pixels with ``(x, y)`` at pixel centres
(``x = 0`` is the first column); features ``[C, h, w]`` cover the whole image, so a cell's centre lies at
``x = (u + 0.5) * W / w - 0.5``. Upsampling to the image size is bilinear without corner alignment (PyTorch's
``nn.Upsample(mode="bilinear")``, as DIFT's ``eval_spair.py``), and :func:`sample_features` reads exactly that
upsampled map at any point (``grid_sample`` with the same alignment), so a sparse read and a dense one agree.

Semantic matching (SPair) is DIFT's: the source point's vector of the upsampled source map, cosine similarity with
every pixel of the upsampled target map, argmax. Geometric matching (HPatches) is mutual nearest neighbours of
keypoint descriptors, then a robust homography (OpenCV).
"""
from __future__ import annotations

import copy
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from propagate.errors import PropagateError
from propagate.features import FeatureExtractor
from propagate.video import to_tensor

IMAGE_FRAME_ID = 0  # the noise of a still image: every image gets frame 0's draw (so a pair is noised alike)


# ---------------------------------------------------------------------------------------------- features of an image


def extraction_size(native_wh: tuple[int, int], size: Sequence[int] | None, multiple: int) -> tuple[int, int]:
    """The ``(W, H)`` an image is resized to for extraction: ``size`` if given (DIFT's ``img_size``, aspect not
    kept), else the image's own size floored to ``multiple`` (DIFT's ``img_size 0``, which needs no resize where the
    sides are multiples already)."""
    if size:
        width, height = (int(v) for v in size)
        if width % multiple or height % multiple:
            raise PropagateError(f"match.size {width}x{height} is not a multiple of {multiple}, which these features "
                                 f"need: give sides that are multiples of {multiple}")
        return width, height
    width, height = (max(multiple, (int(v) // multiple) * multiple) for v in native_wh)
    return width, height


def image_features(extractor: FeatureExtractor, image: np.ndarray, size: Sequence[int] | None = None,
                   frame_id: int = IMAGE_FRAME_ID) -> torch.Tensor:
    """Features of one RGB image ``[H, W, 3]`` uint8, resized (bilinear) to :func:`extraction_size`: ``[C, h, w]``
    float32 on the extractor's device (matching then runs there too)."""
    size_wh = extraction_size((image.shape[1], image.shape[0]), size, extractor.size_multiple)
    with torch.inference_mode():
        feats = extractor.extract(to_tensor(image, size_wh)[None], [frame_id])[0]
    return feats.float()


def with_prompt(extractor: FeatureExtractor, template: str, category: str | None) -> FeatureExtractor:
    """The extractor that describes an image of ``category`` as DIFT's SPair script does: the DIFT-SD extractor with
    the prompt ``template`` (``{category}`` replaced), sharing the loaded networks; an image without a category, an
    empty template or an extractor without a prompt (ADM, baseline) gets ``extractor`` itself."""
    if not template or category is None or not hasattr(extractor, "prompt_embeds"):
        return extractor
    prompt = template.replace("{category}", category)
    if getattr(extractor, "prompt", None) == prompt:
        return extractor
    from propagate.features.dift_sd import encode_prompt, quiet_hf_loading, resolve_model_folder

    described = copy.copy(extractor)  # shares the UNet and VAE; only the prompt differs
    with quiet_hf_loading():
        embeds = encode_prompt(resolve_model_folder(extractor.model), prompt)  # type: ignore[attr-defined]
    described.prompt = prompt  # type: ignore[attr-defined]
    described.prompt_embeds = embeds.to(device=extractor.device, dtype=extractor.dtype)  # type: ignore[attr-defined]
    return described


# ---------------------------------------------------------------------------------------------- dense and sparse reads


def upsample(feats: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
    """``[C, h, w]`` -> ``[C, H, W]`` bilinear, corners not aligned (DIFT's ``nn.Upsample(size, mode="bilinear")``)."""
    return F.interpolate(feats[None], size=(size_wh[1], size_wh[0]), mode="bilinear", align_corners=False)[0]


def sample_features(feats: torch.Tensor, xy: np.ndarray, size_wh: tuple[int, int]) -> torch.Tensor:
    """The vectors of the map upsampled to ``size_wh`` (:func:`upsample`) at points ``xy [N, 2]`` (pixels, any
    real values; outside the image the border's): ``[N, C]``, without upsampling the whole map."""
    width, height = size_wh
    pts = torch.as_tensor(np.asarray(xy, dtype=np.float64), dtype=torch.float64).reshape(-1, 2)
    grid = torch.stack([(2 * pts[:, 0] + 1) / width - 1, (2 * pts[:, 1] + 1) / height - 1], dim=1)
    grid = grid.to(device=feats.device, dtype=feats.dtype).view(1, 1, -1, 2)
    out = F.grid_sample(feats[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.contiguous()


def cell_centres(grid_hw: tuple[int, int], size_wh: tuple[int, int]) -> np.ndarray:
    """Pixel ``(x, y)`` of every cell centre of a ``grid_hw`` map over a ``size_wh`` image, row-major: ``[h*w, 2]``."""
    h, w = grid_hw
    xs = (np.arange(w) + 0.5) * size_wh[0] / w - 0.5
    ys = (np.arange(h) + 0.5) * size_wh[1] / h - 0.5
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------- semantic matching


def _normalized_rows(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x)`` of ``[N, C]`` rows, in place (the same numbers without a second copy of a large map)."""
    return x.div_(x.norm(2, 1, keepdim=True).clamp_min(1e-12).expand_as(x))


def match_points(src_feats: torch.Tensor, tgt_feats: torch.Tensor, src_xy: np.ndarray, src_wh: tuple[int, int],
                 tgt_wh: tuple[int, int], upsampling: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """Carry points from a source image to a target image (DIFT's semantic matching).

    ``bilinear`` (DIFT's ``eval_spair.py``): both maps upsampled to their image's size, the source vector read at
    each point's nearest pixel, cosine similarity with every target pixel, argmax (first pixel in row-major order on
    a tie). ``none``: the source vector read at the point (:func:`sample_features`), cosine with every target cell,
    the best cell's centre.

    Args:
        src_feats, tgt_feats: ``[C, hs, ws]`` and ``[C, ht, wt]`` features of the two images.
        src_xy: ``[J, 2]`` source points (pixels of the ``src_wh`` image).
        src_wh, tgt_wh: native ``(W, H)`` of the two images.

    Returns:
        ``xy [J, 2]`` float64 target pixels and ``similarity [J]`` float64 (the cosine at the argmax).
    """
    src_xy = np.asarray(src_xy, dtype=np.float64).reshape(-1, 2)
    channels = src_feats.shape[0]
    if upsampling == "none":
        vectors = F.normalize(sample_features(src_feats, src_xy, src_wh), dim=1)  # J, C
        targets = F.normalize(tgt_feats.reshape(channels, -1).T, dim=1)  # hw, C
        cos = targets @ vectors.T  # hw, J
        best, index = cos.max(dim=0)
        centres = cell_centres(tuple(tgt_feats.shape[1:]), tgt_wh)
        return centres[index.cpu().numpy()], best.double().cpu().numpy()
    src_up = upsample(src_feats, src_wh)
    cols = np.clip(np.rint(src_xy[:, 0]).astype(np.int64), 0, src_wh[0] - 1)
    rows = np.clip(np.rint(src_xy[:, 1]).astype(np.int64), 0, src_wh[1] - 1)
    vectors = src_up[:, torch.from_numpy(rows).to(src_up.device), torch.from_numpy(cols).to(src_up.device)].T  # J, C
    del src_up
    targets = _normalized_rows(upsample(tgt_feats, tgt_wh).reshape(channels, -1).T)  # HW, C
    xy = np.zeros((len(src_xy), 2))
    similarity = np.zeros(len(src_xy))
    for j in range(len(src_xy)):  # one point at a time, as DIFT: the same products, so the same argmax
        cos = torch.mm(targets, F.normalize(vectors[j:j + 1]).T).view(-1)
        index = int(cos.argmax())
        xy[j] = (index % tgt_wh[0], index // tgt_wh[0])
        similarity[j] = float(cos[index])
    return xy, similarity


def nearest_pixels(vectors: torch.Tensor, tgt_feats: torch.Tensor, tgt_wh: tuple[int, int],
                   chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``vectors [N, C]``, the target pixel of highest cosine similarity in the upsampled target map
    (the nearest neighbour of normalised vectors, as DIFT's edit propagation): ``xy [N, 2]`` and ``similarity [N]``."""
    channels = tgt_feats.shape[0]
    targets = _normalized_rows(upsample(tgt_feats, tgt_wh).reshape(channels, -1).T)  # HW, C
    queries = F.normalize(vectors.to(targets.device), dim=1)
    best = torch.empty(len(queries), device=targets.device)
    index = torch.empty(len(queries), dtype=torch.long, device=targets.device)
    for start in range(0, len(queries), chunk):
        values, where = (targets @ queries[start:start + chunk].T).max(dim=0)
        best[start:start + chunk], index[start:start + chunk] = values, where
    idx = index.cpu().numpy()
    return np.stack([idx % tgt_wh[0], idx // tgt_wh[0]], axis=1).astype(np.float64), best.double().cpu().numpy()


# ---------------------------------------------------------------------------------------------- geometric matching


def mutual_nearest(a: torch.Tensor, b: torch.Tensor, metric: str = "cosine") -> np.ndarray:
    """Mutual nearest neighbours of descriptors ``a [N, C]`` and ``b [M, C]`` (``cosine`` or ``l2``, as DIFT's
    ``eval_homography.py``): ``[K, 2]`` index pairs ``(i, j)``, in order of ``i``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if metric == "cosine":
        sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    elif metric == "l2":
        sim = -torch.cdist(a[None], b[None])[0]
    else:
        raise PropagateError(f"match.metric {metric!r}: choose cosine or l2")
    nn12 = sim.argmax(dim=1)
    nn21 = sim.argmax(dim=0)
    ids = torch.arange(len(a), device=sim.device)
    keep = nn21[nn12] == ids
    return torch.stack([ids[keep], nn12[keep]], dim=1).cpu().numpy()


def detect_keypoints(image: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` keypoints ``[N, 2]`` (x, y) of an RGB image by OpenCV's SIFT detector (no learned weights),
    strongest first, duplicates removed."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    found = cv2.SIFT_create(nfeatures=int(count)).detect(grey, None)
    found = sorted(found, key=lambda k: (-k.response, k.pt[1], k.pt[0]))
    xy = np.array([k.pt for k in found], dtype=np.float32).reshape(-1, 2)
    _, first = np.unique(xy, axis=0, return_index=True)
    return xy[np.sort(first)][:count]


def fit_homography(src_xy: np.ndarray, dst_xy: np.ndarray, method: str = "ransac",
                   threshold: float = 3.0) -> tuple[np.ndarray | None, np.ndarray]:
    """A homography ``[3, 3]`` mapping ``src_xy [N, 2]`` onto ``dst_xy [N, 2]`` by OpenCV's robust fit (``ransac``
    or ``lmeds``), and the inlier flags ``[N]``; ``None`` where there are fewer than 4 matches or no fit."""
    src = np.asarray(src_xy, dtype=np.float32).reshape(-1, 1, 2)
    dst = np.asarray(dst_xy, dtype=np.float32).reshape(-1, 1, 2)
    none = np.zeros(len(src), dtype=bool)
    if len(src) < 4:
        return None, none
    flag = {"ransac": cv2.RANSAC, "lmeds": cv2.LMEDS}[method]
    cv2.setRNGSeed(0)  # RANSAC draws samples from OpenCV's generator: the same fit on every run
    homography, inliers = cv2.findHomography(src, dst, flag, ransacReprojThreshold=float(threshold))
    if homography is None:
        return None, none
    return homography, inliers.reshape(-1).astype(bool)


def project(homography: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Points ``xy [N, 2]`` mapped by ``homography [3, 3]``: ``[N, 2]``."""
    pts = np.concatenate([np.asarray(xy, dtype=np.float64).reshape(-1, 2), np.ones((len(xy), 1))], axis=1)
    out = pts @ np.asarray(homography, dtype=np.float64).T
    return out[:, :2] / out[:, 2:]


def corner_error(estimate: np.ndarray | None, truth: np.ndarray, size_wh: tuple[int, int]) -> float:
    """Mean distance between the image corners ``(0, 0) .. (W-1, H-1)`` mapped by ``estimate`` and by ``truth``
    (HPatches' homography error, as DIFT's ``eval_homography.py``); infinite without an estimate."""
    if estimate is None:
        return float("inf")
    w, h = size_wh
    corners = np.array([[0, 0], [0, h - 1], [w - 1, 0], [w - 1, h - 1]], dtype=np.float64)
    error = float(np.linalg.norm(project(estimate, corners) - project(truth, corners), axis=1).mean())
    return error if np.isfinite(error) else float("inf")


# ---------------------------------------------------------------------------------------------- edits (DIFT's recipe)


def edit_samples(alpha: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` pixels ``[N, 2]`` (x, y) drawn without replacement where ``alpha [H, W] > 0`` (all if fewer)."""
    ys, xs = np.nonzero(alpha > 0)
    order = np.random.default_rng(seed).permutation(len(xs))[:count]
    return np.stack([xs[order], ys[order]], axis=1).astype(np.float64)


def fit_edit(src_vectors: torch.Tensor, src_xy: np.ndarray, tgt_feats: torch.Tensor, tgt_wh: tuple[int, int],
             threshold: float) -> tuple[np.ndarray | None, int]:
    """The homography ``[3, 3]`` from source pixels ``src_xy [N, 2]`` (vectors ``[N, C]``) to the target, fitted
    with RANSAC to each sample's best match; ``None`` if no fit. Also the number of inliers."""
    dst_xy, _ = nearest_pixels(src_vectors, tgt_feats, tgt_wh)
    homography, inliers = fit_homography(src_xy, dst_xy, "ransac", threshold)
    return homography, int(inliers.sum())


def composite(image: np.ndarray, edit: np.ndarray, homography: np.ndarray,
              visible: np.ndarray | None = None) -> np.ndarray:
    """``image [H, W, 3]`` with ``edit [h, w, 4]`` warped by ``homography`` and alpha-blended over it (``visible
    [H, W]`` bool: where the edit may show; elsewhere it is hidden)."""
    height, width = image.shape[:2]
    warped = cv2.warpPerspective(edit, homography, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    alpha = warped[..., 3:].astype(np.float32) / 255.0
    if visible is not None:
        alpha = alpha * visible[..., None]
    out = alpha * warped[..., :3].astype(np.float32) + (1 - alpha) * image.astype(np.float32)
    return np.rint(out).clip(0, 255).astype(np.uint8)
